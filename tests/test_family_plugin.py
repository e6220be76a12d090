"""A family is an addition: one defined here, in the test, goes through the whole product.

``pairtest`` takes a second photograph beside the first (an image condition entering the encoder,
where the shipped families take a caption entering the fusion stage). Nothing outside this file
names it: it is registered here (and, for the Triton models, through ``$LANGCOLOR_FAMILY_MODULES``),
trained a few steps with ``langcolor.export.train``, exported with parity by the repository writer,
served by a real tritonserver through its ensemble and through the ``colorize`` endpoint, and run
in-process by ``Colorizer``, with the same pixels everywhere.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from langcolor.client import families
from langcolor.client.errors import ImageError
from langcolor.client.families import IMAGE, Conditioned, Family, InputField
from langcolor.client.lab import AB_SCALE
from langcolor.client.photo import prepare
from langcolor.client.spec import BATCH, Condition, ModelGeometry, TensorSpec, ab_output, image_l

NAME = "pairtest"
SECOND = InputField("second", IMAGE, "a second photograph, whose lightness tints the first")


@dataclass(frozen=True)
class PairConfig:
    name: str
    image_size: int
    width: int

    def to_dict(self) -> dict:
        return asdict(self)


def geometry(cfg: PairConfig, assets: Mapping[str, bytes]) -> ModelGeometry:
    s, q = cfg.image_size, cfg.image_size // 4
    second = TensorSpec("SECOND_L", "float32", (BATCH, 1, s, s), (0.0, 100.0))
    feats = TensorSpec("PAIR_FEATURES", "float32", (BATCH, cfg.width, q, q))
    mixed = TensorSpec("PAIR_MIXED", "float32", (BATCH, cfg.width, q, q))
    return ModelGeometry(NAME, s, image_l(s), (Condition(second, "encoder"),), (feats,), (mixed,), (ab_output(s),))


class PairConditioner:
    def __init__(self, geom: ModelGeometry):
        self.size = geom.image_size

    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        if values.get("second") is None:
            raise ImageError("model 'pairtest' needs a second photograph (--second IMAGE)")
        return Conditioned({"SECOND_L": prepare(values["second"], self.size).l_small})

    def describe(self) -> dict:
        return {}


class Encoder(nn.Module):
    def __init__(self, cfg: PairConfig):
        super().__init__()
        self.conv = nn.Conv2d(2, cfg.width, 4, stride=4)

    def forward(self, L: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat([L, second], 1) / 50.0 - 1.0))  # [B,W,S/4,S/4]


class Fusion(nn.Module):
    def __init__(self, cfg: PairConfig):
        super().__init__()
        self.conv = nn.Conv2d(cfg.width, cfg.width, 3, padding=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(feats))


class Decoder(nn.Module):
    def __init__(self, cfg: PairConfig):
        super().__init__()
        self.up = nn.ConvTranspose2d(cfg.width, 2, 4, stride=4)

    def forward(self, mixed: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(mixed)) * AB_SCALE  # [B,2,S,S]


class PairNet(nn.Module):
    def __init__(self, cfg: PairConfig, geom: ModelGeometry):
        super().__init__()
        self.cfg, self.geometry = cfg, geom
        self.encoder, self.fusion, self.decoder = Encoder(cfg), Fusion(cfg), Decoder(cfg)

    def forward(self, L, second):
        return self.decoder(self.fusion(self.encoder(L, second)))


def _batch(cfg: PairConfig, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    s = cfg.image_size
    L = torch.rand(4, 1, s, s, generator=g) * 100
    second = torch.rand(4, 1, s, s, generator=g) * 100
    target = torch.cat([second - 50, 50 - second], 1) * 0.5  # ab follows the second photo's lightness
    return {"L": L, "second": second, "ab": target}


training = SimpleNamespace(
    make_assets=lambda cfg, options: {},  # no tokenizer, no files: nothing for the conditioner to load
    data_source=lambda cfg, conditioner, options: (lambda step: _batch(cfg, step)),
    losses=lambda model, batch, options: {"total": (model(batch["L"], batch["second"]) - batch["ab"]).abs().mean()},
)
network = SimpleNamespace(build=lambda cfg, geom: PairNet(cfg, geom))


def register_family() -> Family:
    """Register ``pairtest`` (the test process calls it; the Triton models through the environment)."""
    configs = {"tiny": PairConfig("tiny", 16, 4)}
    return families.register(Family(
        name=NAME, title="a test family", summary="colours a photo from a second photo's lightness",
        inputs=(SECOND,), configs=configs, config_from_dict=lambda raw: PairConfig(**raw), geometry=geometry,
        conditioner=lambda geom, assets: PairConditioner(geom), parts={"network": network, "training": training},
    ))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    record = register_family()
    yield record
    families.unregister(NAME)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _photos() -> tuple[bytes, bytes]:
    from skimage import data as skdata

    return _png(skdata.camera()[::6, ::5]), _png(skdata.astronaut()[::4, ::4])


@pytest.fixture(scope="module")
def trained(family, tmp_path_factory):
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train

    result = train(TrainOptions(config="tiny", steps=5, batch_size=4, lr=1e-2, family=NAME, checkpoint_every=5),
                   tmp_path_factory.mktemp("pair_run"), progress=False)
    return load_checkpoint(result.weights)


@pytest.fixture(scope="module")
def repository(trained, tmp_path_factory):
    from langcolor.export.triton_repo import ExportEntry, write_repository

    root = tmp_path_factory.mktemp("pair_repo") / "repo"
    (exported,) = write_repository([ExportEntry.from_checkpoint(trained)], root)
    return root, exported


def test_the_family_trains_exports_with_parity_and_colorizes_in_process(family, trained, repository):
    from langcolor.client.colorizer import Colorizer

    assert trained.family == NAME and trained.assets == {} and np.isfinite(trained.meta["train_seconds"])
    root, exported = repository
    assert exported.parity.ok and set(exported.parity.worst()) == {
        "encoder.PAIR_FEATURES", "fusion.PAIR_MIXED", "decoder.AB", "pipeline.AB"}
    assert exported.manifest.geometry.condition_specs[0].name == "SECOND_L"
    first, second = _photos()
    col = Colorizer(model=NAME, model_repository=root)
    result = col.colorize(first, second=second)
    assert result.rgb.shape[:2] == (86, 103) and result.ab_small.shape == (2, 16, 16)
    # The condition reaches the network: another second photo, other colours.
    other = col.colorize(first, second=_png(np.full((20, 20, 3), 250, np.uint8)))
    assert np.abs(other.ab_small - result.ab_small).mean() > 0.5
    with pytest.raises(ImageError, match="needs a second photograph"):
        col.colorize(first)


@pytest.mark.server
def test_the_family_is_served_through_its_ensemble_and_the_endpoint(family, repository, monkeypatch, tmp_path):
    from langcolor.client.colorizer import Colorizer
    from langcolor.client.remote import RemoteStages, RequestRejectedError
    from langcolor.server.launcher import TritonServer, free_ports

    root, _ = repository
    # The Triton models import this module to find the family (registered by register_family).
    monkeypatch.setenv(families.ENV_MODULES, f"{__name__}:register_family")
    http, grpc, metrics = free_ports(3)
    first, second = _photos()
    local = Colorizer(model=NAME, model_repository=root)
    want = local.colorize(first, second=second)
    feeds = {"L": local.prepare(first).l_small[None], "SECOND_L": local.condition({"second": second}).tensors["SECOND_L"][None]}
    with TritonServer(root, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=tmp_path / "t.log") as server:
        for url in (f"grpc://{server.endpoints.grpc_url}", f"http://{server.endpoints.http_url}"):
            with RemoteStages(url, family=NAME, assets={}, geometry=local.geometry) as remote:
                ab = remote.infer(feeds)["AB"]
                assert np.abs(ab[0] - want.ab_small).max() < 1e-3
                answer = remote.colorize_bytes(first, model=NAME, second=second)
                png = np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"), dtype=int)
                assert np.abs(png - want.rgb.astype(int)).max() <= 1
                with pytest.raises(RequestRejectedError, match="CAPTION"):  # this endpoint takes no caption at all
                    remote.colorize_bytes(first, caption="a red circle", model=NAME, second=second)
            thin = Colorizer(model=NAME, server=url).colorize(first, second=second)  # no local model at all
            assert np.abs(thin.rgb.astype(int) - want.rgb.astype(int)).max() <= 1
