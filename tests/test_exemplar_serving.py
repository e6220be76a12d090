"""The exemplar family served by a real tritonserver: the ensemble and the ``colorize`` endpoint (MODEL,
IMAGE, REFERENCE or PALETTE) give the in-process pixels over gRPC and HTTP, and a bad reference fails
its own request alone (a ``tiny`` network trained a few steps: the colours mean nothing, the wiring does)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server

NAME = "exemplar"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.families.exemplar.config import TrainingOptions
    from langcolor.export.train import TrainOptions, train
    from langcolor.export.triton_repo import ExportEntry, write_repository

    torch.set_num_threads(1)
    options = TrainOptions(config="tiny", steps=3, batch_size=4, family=NAME, checkpoint_every=3,
                           family_options=TrainingOptions(stage1_steps=1, synthetic_rate=1.0))
    result = train(options, tmp_path_factory.mktemp("exemplar_run"), progress=False)
    root = tmp_path_factory.mktemp("exemplar_served") / "repo"
    write_repository([ExportEntry.from_checkpoint(load_checkpoint(result.weights))], root)
    return root


def _encoded(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)


def test_the_endpoint_and_the_ensemble_give_the_in_process_pixels(repository, tmp_path):
    pytest.importorskip("pytriton")
    from skimage import data as skdata

    from langcolor.client.colorizer import Colorizer
    from langcolor.client.remote import RemoteStages, RequestRejectedError
    from langcolor.server.launcher import TritonServer, free_ports

    photo = _encoded(skdata.camera()[::6, ::5])
    reference = _encoded(skdata.coffee(), "JPEG")  # another size and format than the photo
    palette = "#b03a2e,#2e86c1,#f1c40f"
    gray = _encoded(skdata.camera()[::8, ::8])
    local = Colorizer(model=NAME, model_repository=repository)
    want = local.colorize(photo, reference=reference)
    want_palette = local.colorize(photo, palette=palette)
    feeds = {"L": local.prepare(photo).l_small[None],
             **{k: v[None] for k, v in local.condition({"reference": reference}).tensors.items()}}
    http, grpc, metrics = free_ports(3)
    with TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=tmp_path / "t.log") as server:
        for url in (f"grpc://{server.endpoints.grpc_url}", f"http://{server.endpoints.http_url}"):
            with RemoteStages(url, family=NAME, assets={}, geometry=local.geometry) as remote:
                served = remote.infer(feeds)  # the ensemble: L, REF_L, REF_AB -> AB, GATE
                assert np.abs(served["AB"][0] - want.ab_small).max() < 1e-3
                assert np.abs(served["GATE"][0] - want.outputs["GATE"]).max() < 1e-4
                answer = remote.colorize_bytes(photo, model=NAME, reference=reference)  # MODEL + REFERENCE
                assert np.abs(_pixels(answer.data) - want.rgb.astype(int)).max() <= 1
                with pytest.raises(RequestRejectedError, match="carries no colour"):
                    remote.colorize_bytes(photo, model=NAME, reference=gray)
                with pytest.raises(RequestRejectedError, match="reference: .*not an image"):
                    remote.colorize_bytes(photo, model=NAME, reference=b"\x89PNG\r\n\x1a\n not really")
                with pytest.raises(RequestRejectedError, match="not a hex colour"):
                    remote.colorize_bytes(photo, model=NAME, palette="#b03a2e,#2e86zz")
                with pytest.raises(RequestRejectedError, match="not both"):
                    remote.colorize_bytes(photo, model=NAME, reference=reference, palette=palette)
                # The server is still answering, the same pixels as before the bad requests.
                again = remote.colorize_bytes(photo, model=NAME, palette=palette)
                assert np.abs(_pixels(again.data) - want_palette.rgb.astype(int)).max() <= 1
            thin = Colorizer(model=NAME, server=url).colorize(photo, reference=reference)  # no local model at all
            assert np.abs(thin.rgb.astype(int) - want.rgb.astype(int)).max() <= 1
