"""The sketch family on a real tritonserver: the ``colorize`` endpoint (drawing, INSTRUCTION, optional
CANVAS in; the new canvas PNG and NOTES out), the ensemble's tensors, and ``langcolor sketch --server``,
each giving the in-process pixels. The server keeps no session: the canvas travels with each request.

Random-weight ``tiny`` network (the wiring, not the colours), exported here.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from langcolor.client.cli import main as cli
from langcolor.export.families.sketch import drawing
from langcolor.export.families.sketch.config import FAMILY

pytestmark = pytest.mark.server


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _pixels(data) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("pytriton")
    from langcolor.export.checkpoint import Checkpoint
    from langcolor.export.triton_repo import ExportEntry, write_repository
    from langcolor.server.launcher import TritonServer, free_ports

    root = tmp_path_factory.mktemp("sketch_served") / "repo"
    write_repository([ExportEntry.from_checkpoint(Checkpoint.random(FAMILY, "tiny", seed=1))], root)
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("sketch_log") / "triton.log"
    with TritonServer(root, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=log) as server:
        yield root, server


@pytest.fixture(scope="module")
def drawing_png():
    scene = drawing.random_scene(np.random.default_rng(8), 256, 3, copies=2, distractors=1)
    return _png(scene.rgb())


def test_endpoint_answers_the_new_canvas_and_notes_as_in_process(served, drawing_png):
    from langcolor.client.colorizer import Colorizer
    from langcolor.client.remote import RemoteStages, RequestRejectedError

    root, server = served
    local = Colorizer(model=FAMILY, model_repository=root)
    first = local.colorize(drawing_png, instruction="the left car is red, please")
    second = local.colorize(drawing_png, instruction="the sky is blue", canvas=_png(first.rgb))
    for url in (f"grpc://{server.endpoints.grpc_url}", f"http://{server.endpoints.http_url}"):
        with RemoteStages(url, family=FAMILY, endpoint=True) as remote:
            a = remote.colorize_bytes(drawing_png, model=FAMILY, instruction="the left car is red, please")
            assert (_pixels(a.data) == first.rgb).all()
            assert [n.to_dict() for n in a.notes] == [n.to_dict() for n in first.notes]
            assert any(n.kind == "unknown-words" and n.words == ("please",) for n in a.notes)
            b = remote.colorize_bytes(drawing_png, model=FAMILY, instruction="the sky is blue", canvas=a.data)
            assert (_pixels(b.data) == second.rgb).all()
            with pytest.raises(RequestRejectedError, match="INSTRUCTION"):
                remote.colorize_bytes(drawing_png, model=FAMILY, canvas=a.data)
            with pytest.raises(RequestRejectedError, match="canvas is 10x10"):
                remote.colorize_bytes(drawing_png, model=FAMILY, instruction="the sky is blue",
                                      canvas=_png(np.zeros((10, 10, 3), np.uint8)))


def test_sketch_command_through_the_server_equals_in_process(served, drawing_png, tmp_path):
    root, server = served
    src = tmp_path / "d.png"
    src.write_bytes(drawing_png)
    args = ["-i", "the left car is red", "-i", "the sky is blue", "-i", "the ground is green"]
    local, remote, tensors = tmp_path / "local.png", tmp_path / "remote.png", tmp_path / "tensors.png"
    assert cli(["sketch", str(src), *args, "-o", str(local), "--model-repository", str(root)]) == 0
    assert cli(["sketch", str(src), *args, "-o", str(remote), "--server", f"grpc://{server.endpoints.grpc_url}"]) == 0
    assert cli(["sketch", str(src), *args, "-o", str(tensors), "--server", f"http://{server.endpoints.http_url}",
                "--via", "ensemble", "--model-repository", str(root)]) == 0
    assert (_pixels(local) == _pixels(remote)).all() and (_pixels(local) == _pixels(tensors)).all()
