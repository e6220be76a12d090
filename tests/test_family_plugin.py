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


# ------------------------------------------------------------------------------ a driven family
LOOP = "looptest"
SEED = InputField("seed", families.TEXT, "the sampler's seed", required=False)
STEPS = 3


def loop_geometry(cfg: PairConfig, assets: Mapping[str, bytes]) -> ModelGeometry:
    """encoder L -> LOOP_FEATURES; fusion -> LOOP_COND; decoder (LOOP_COND, CANVAS) -> STEP, run
    STEPS times by the driver; a request carries SEED and answers AB."""
    from langcolor.client.spec import Serving

    s, q = cfg.image_size, cfg.image_size // 4
    canvas = TensorSpec("CANVAS", "float32", (BATCH, 2, s, s), (-AB_SCALE, AB_SCALE))
    feats = TensorSpec("LOOP_FEATURES", "float32", (BATCH, cfg.width, q, q))
    cond = TensorSpec("LOOP_COND", "float32", (BATCH, cfg.width, q, q))
    step = TensorSpec("STEP", "float32", (BATCH, 2, s, s))
    seed = TensorSpec("SEED", "int64", (BATCH, 1), (0, 2**31 - 1))
    serving = Serving((seed,), (ab_output(s),))
    return ModelGeometry(LOOP, s, image_l(s), (Condition(canvas, "decoder"),), (feats,), (cond,), (step,), serving)


class LoopDecoder(nn.Module):
    def __init__(self, cfg: PairConfig):
        super().__init__()
        self.up = nn.ConvTranspose2d(cfg.width, 2, 4, stride=4)
        self.mix = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, cond: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(cond) + self.mix(canvas / AB_SCALE)) * 20.0  # [B,2,S,S]


class LoopNet(nn.Module):
    def __init__(self, cfg: PairConfig, geom: ModelGeometry):
        super().__init__()
        self.cfg, self.geometry = cfg, geom
        self.encoder, self.fusion, self.decoder = _LoopEncoder(cfg), Fusion(cfg), LoopDecoder(cfg)


class _LoopEncoder(Encoder):
    def __init__(self, cfg: PairConfig):
        nn.Module.__init__(self)
        self.conv = nn.Conv2d(1, cfg.width, 4, stride=4)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(L / 50.0 - 1.0))


class LoopDriver:
    """A stand-in sampler: the decoder runs STEPS times on its own canvas, plus seeded noise."""

    def run(self, call_stage, feeds: dict, geometry: ModelGeometry) -> dict:
        feeds.update(call_stage("encoder", feeds))
        feeds.update(call_stage("fusion", feeds))
        canvas = np.zeros((feeds["L"].shape[0], 2, geometry.image_size, geometry.image_size), np.float32)
        for i in range(STEPS):
            step = call_stage("decoder", {**feeds, "CANVAS": canvas})["STEP"]
            for b, seed in enumerate(feeds["SEED"][:, 0]):  # each image its own stream: batching changes nothing
                noise = np.random.default_rng([int(seed), i]).normal(0, 5, step.shape[1:])
                canvas[b] = np.clip(canvas[b] + step[b] + noise, -AB_SCALE, AB_SCALE)
        return {"AB": canvas}


class SeedConditioner:
    def condition(self, values: Mapping[str, Any]) -> Conditioned:
        raw = values.get("seed", 0)
        raw = raw.decode() if isinstance(raw, bytes) else raw
        try:
            seed = int(raw)
        except (TypeError, ValueError) as e:
            raise ImageError(f"seed must be an integer, got {raw!r}") from e
        return Conditioned({"SEED": np.array([seed], np.int64)})

    def describe(self) -> dict:
        return {}


def _loop_batch(cfg: PairConfig, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"L": torch.rand(2, 1, cfg.image_size, cfg.image_size, generator=g) * 100}


def _loop_loss(model, batch, options):
    cond = model.fusion(model.encoder(batch["L"]))
    out = model.decoder(cond, torch.zeros(2, 2, model.cfg.image_size, model.cfg.image_size))
    return {"total": out.abs().mean()}


def register_loop_family() -> Family:
    return families.register(Family(
        name=LOOP, title="a test family", summary="a seeded loop over its decoder", inputs=(SEED,),
        configs={"tiny": PairConfig("tiny", 16, 4)}, config_from_dict=lambda raw: PairConfig(**raw),
        geometry=loop_geometry, conditioner=lambda geom, assets: SeedConditioner(), driver=LoopDriver(),
        parts={"network": SimpleNamespace(build=lambda cfg, geom: LoopNet(cfg, geom)),
               "training": SimpleNamespace(make_assets=lambda cfg, o: {}, losses=_loop_loss,
                                           data_source=lambda cfg, c, o: (lambda step: _loop_batch(cfg, step)))},
    ))


@pytest.fixture(scope="module")
def loop_repository(tmp_path_factory):
    from langcolor.export.checkpoint import load_checkpoint
    from langcolor.export.train import TrainOptions, train
    from langcolor.export.triton_repo import ExportEntry, write_repository

    register_loop_family()
    try:
        result = train(TrainOptions(config="tiny", steps=2, batch_size=2, family=LOOP, checkpoint_every=2),
                       tmp_path_factory.mktemp("loop_run"), progress=False)
        root = tmp_path_factory.mktemp("loop_repo") / "repo"
        (exported,) = write_repository([ExportEntry.from_checkpoint(load_checkpoint(result.weights))], root)
        yield root, exported
    finally:
        families.unregister(LOOP)


def test_a_driven_family_exports_with_driver_parity_and_runs_in_process(loop_repository):
    from langcolor.client.colorizer import Colorizer

    root, exported = loop_repository
    worst = exported.parity.worst()
    assert "driver.AB" in worst and worst["driver.AB"] <= exported.parity.tolerances()["driver.AB"]
    first, _ = _photos()
    col = Colorizer(model=LOOP, model_repository=root)
    a, b, a2 = col.colorize(first, seed="1"), col.colorize(first, seed="2"), col.colorize(first, seed="1")
    assert np.array_equal(a.rgb, a2.rgb) and np.abs(a.ab_small - b.ab_small).mean() > 0.5  # seeded, diverse
    many = col.colorize_many([(first, {"seed": "2"}), (first, {"seed": "1"})])  # batched: each its own stream
    assert np.array_equal(many[0].rgb, b.rgb) and np.array_equal(many[1].rgb, a.rgb)


@pytest.mark.server
def test_a_driven_family_is_served_by_its_driver_with_the_same_samples(loop_repository, monkeypatch, tmp_path):
    from langcolor.client.colorizer import Colorizer
    from langcolor.server.launcher import TritonServer, free_ports

    root, _ = loop_repository  # the fixture keeps the family registered in this process
    monkeypatch.setenv(families.ENV_MODULES, f"{__name__}:register_loop_family")
    first, _ = _photos()
    want = Colorizer(model=LOOP, model_repository=root).colorize(first, seed="7")
    http, grpc, metrics = free_ports(3)
    with TritonServer(root, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=tmp_path / "t.log") as server:
        url = f"grpc://{server.endpoints.grpc_url}"
        thin = Colorizer(model=LOOP, server=url).colorize(first, seed="7")
        tensors = Colorizer(model=LOOP, server=url, model_repository=root, via="ensemble").colorize(first, seed="7")
    assert np.array_equal(thin.rgb, want.rgb) and np.array_equal(tensors.rgb, want.rgb)
