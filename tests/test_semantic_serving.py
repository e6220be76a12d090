"""The sampler served by a real tritonserver: the family's model runs the same driver over BLS calls
to its stage models, and a seed gives the same picture there as in-process, alone or batched with
other requests (a ``tiny`` network trained a few steps: the colours mean nothing, the seeding does)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server

NAME = "semantic"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train
    from langcolor.export.triton_repo import ExportEntry, write_repository

    torch.set_num_threads(1)
    result = train(TrainOptions(config="tiny", steps=3, batch_size=4, family=NAME, checkpoint_every=3),
                   tmp_path_factory.mktemp("semantic_run"), progress=False)
    root = tmp_path_factory.mktemp("semantic_served") / "repo"
    write_repository([ExportEntry.from_checkpoint(load_checkpoint(result.weights))], root)
    return root


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_seeds_give_the_same_pictures_served_as_in_process(repository, tmp_path):
    pytest.importorskip("pytriton")
    from skimage import data as skdata

    from langcolor.client.colorizer import Colorizer
    from langcolor.client.errors import LangcolorError
    from langcolor.client.remote import RemoteStages, RequestRejectedError
    from langcolor.server.launcher import TritonServer, free_ports

    photos = [_png(skdata.astronaut()[::5, ::5]), _png(skdata.camera()[::6, ::6])]
    local = Colorizer(model=NAME, model_repository=repository)
    want = {(k, s): local.colorize(photo, seed=str(s), temperature="0.9") for k, photo in enumerate(photos) for s in (3, 4)}
    http, grpc, metrics = free_ports(3)
    with TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=tmp_path / "t.log") as server:
        for url in (f"grpc://{server.endpoints.grpc_url}", f"http://{server.endpoints.http_url}"):
            thin = Colorizer(model=NAME, server=url)  # the endpoint: no local model
            # Four requests in flight at once: the pipeline model batches them through one loop.
            futures = {key: thin.submit_encoded(photos[key[0]], {"seed": str(key[1]), "temperature": "0.9"})
                       for key in want}
            for key, future in futures.items():
                # The same samples: a different seed or batch would move colours by far more than the one
                # 8-bit level by which the compiled reconstruction (loaded once a process has run a batch)
                # may differ from the server's numpy one.
                diff = np.abs(_pixels(future.result().data).astype(int) - want[key].rgb.astype(int)).max()
                assert diff <= 1, (url, key, diff)
            with pytest.raises(RequestRejectedError, match="seed must be an integer"):
                thin.colorize(photos[0], seed="many")
            thin.close()
        # The tensor path: the family's model answers AB and SEG for the prepared image.
        tensors = Colorizer(model=NAME, server=f"grpc://{server.endpoints.grpc_url}", model_repository=repository,
                            via="ensemble")
        got = tensors.colorize(photos[1], seed="4", temperature="0.9")
        assert np.array_equal(got.rgb, want[(1, 4)].rgb)
        assert np.abs(got.ab_small - want[(1, 4)].ab_small).max() < 1e-3
        assert np.array_equal(got.outputs["SEG"], want[(1, 4)].outputs["SEG"])
        tensors.close()
        with RemoteStages(f"grpc://{server.endpoints.grpc_url}", family=NAME, assets={}, geometry=local.geometry) as rs:
            feeds = {"L": local.prepare(photos[0]).l_small[None],
                     **{k: v[None] for k, v in local.condition({"seed": "3"}).tensors.items()}}
            bad = dict(feeds, TEMPERATURE=np.array([[5.0]], np.float32))  # outside [0, 2]: refused before it is sent
            with pytest.raises(LangcolorError, match="TEMPERATURE: values must lie in"):
                rs.infer(bad)
            assert rs.infer(feeds)["AB"].shape == (1, *local.geometry.request_outputs[0].dims)  # the model stays up
