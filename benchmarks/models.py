"""The networks a benchmark run measures: the PyTorch modules and a model repository exported from them.

One model family per run, any registered one (``langcolor.client.families``); the family's record
supplies its configs, network, tensor contract and conditioner, and nothing here knows which family
it is. ``full`` (and any config without shipped weights) gets random weights with the assets its
training would make (``Checkpoint.random``), exported with the project's own exporter (python target)
into a temporary folder, so every path runs the same ONNX files and the same arithmetic. ``small`` is
the shipped configuration: the checkpoint ``export/weights/<family>_small.pt`` and, when its weights
hash matches, the committed ``model_repository/``; without the checkpoint it falls back to random
weights (said in the JSON).

Every path is fed the same ensemble inputs (``BenchModel.inputs``), generated from the family's
ensemble spec: the image is a smooth photo-like plane within its value range; the conditions come
from the family's conditioner given a representative user input (``CAPTION`` for a text input, a
photograph for an image input) when the conditioner accepts it, else random in-range values from
the condition's spec.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from langcolor.client import families
from langcolor.client.errors import LangcolorError, ModelNotFoundError
from langcolor.client.paths import default_model_repository
from langcolor.client.runtime import VERSION, ModelBundle, read_assets
from langcolor.client.spec import MANIFEST_FILE, STAGES, ModelGeometry, ModelManifest, StageSpec, ensemble_spec, stage_specs

log = logging.getLogger(__name__)

CAPTION = "a red circle on a blue background"  # words the shipped synthetic tokenizers know
REFERENCE_SIZE = (640, 480)  # an image input's representative photograph (0.3 MP, JPEG)


def photo_jpeg(width: int, height: int, quality: int = 90, photo: str = "astronaut") -> bytes:
    """A real photograph (one of scikit-image's) resized to ``width x height``, as JPEG bytes."""
    from PIL import Image
    from skimage import data as skdata

    im = Image.fromarray(getattr(skdata, photo)()).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def representative_values(record: families.Family) -> dict[str, Any]:
    """What a user typically gives ``record`` beside the photo: ``CAPTION`` for a text input, a
    photograph (JPEG bytes, another scene than the benchmark's photo) for an image input."""
    return {f.name: CAPTION if f.kind == families.TEXT else photo_jpeg(*REFERENCE_SIZE, photo="coffee")
            for f in record.inputs}


def accepted_values(record: families.Family, conditioner) -> dict[str, Any] | None:
    """``representative_values`` if the family's conditioner accepts them; else with fewer of the
    optional ones (a user who leaves a sampler's seed at its default, or gives a reference and no
    palette); else None (the benchmark then draws the condition tensors at random within their
    declared ranges)."""
    from itertools import combinations

    values = representative_values(record)
    optional = [f.name for f in record.inputs if not f.required and f.name in values]
    # All of them, then fewer and fewer optional ones (inputs that exclude each other: a reference or a palette).
    candidates = [{k: v for k, v in values.items() if k not in dropped}
                  for n in range(len(optional) + 1) for dropped in combinations(optional, n)]
    for candidate in candidates:
        try:
            conditioner.condition(candidate)
        except LangcolorError as e:
            log.info("family '%s' refuses the inputs %s (%s)", record.name, sorted(candidate), e)
            continue
        return candidate
    log.info("family '%s' refuses the representative inputs: random in-range conditions", record.name)
    return None


def describe_values(values: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The user inputs for the JSON: text as is, an image as its size in bytes."""
    if values is None:
        return None
    return {k: v if isinstance(v, str) else f"<image, {len(v)} bytes>" for k, v in values.items()}


def smooth_plane(shape: tuple[int, ...], value_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """float32 ``shape`` = [B, C, H, W]: an 8x8 grid of random values in ``value_range``, bilinearly
    upsampled (a photo-like image: smooth regions and edges, not noise)."""
    lo, hi = value_range
    b, c, h, w = shape
    coarse = rng.uniform(lo, hi, size=(b, c, 8, 8)).astype(np.float32)  # [B,C,8,8]
    fine = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear").numpy()
    return np.ascontiguousarray(np.clip(fine, lo, hi).astype(np.float32))  # [B,C,H,W]


# --- running a family's stages, whatever runs them ---------------------------------------------------

RunStage = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]  # (stage, tensors) -> the stage's outputs


def stage_feeds(run_stage: RunStage, specs: Mapping[str, StageSpec], feeds: Mapping[str, Any]) -> dict[str, dict]:
    """Each stage's own inputs, in its spec's order: the image and conditions from ``feeds``, the rest
    from the previous stages' outputs (computed once with ``run_stage``, so a stage is timed on its
    own path's tensors). A stage input that neither gives (what a driven family's driver feeds its
    decoder at each step: a canvas, a position) is drawn within its declared range, seeded."""
    from langcolor.export.onnx_export import sample_input

    tensors, out = dict(feeds), {}
    batch = next(iter(feeds.values())).shape[0]
    rng = np.random.default_rng(0)
    for stage in STAGES:
        for t in specs[stage].inputs:
            if t.name not in tensors:
                drawn = sample_input(t, batch, rng)
                like = next(iter(feeds.values()))
                tensors[t.name] = torch.from_numpy(drawn).to(like.device) if isinstance(like, torch.Tensor) else drawn
        out[stage] = {n: tensors[n] for n in specs[stage].input_names}
        if stage != STAGES[-1]:
            tensors.update(run_stage(stage, out[stage]))
    return out


def run_chain(run_stage: RunStage, specs: Mapping[str, StageSpec], feeds: Mapping[str, Any]) -> dict:
    """encoder -> fusion -> decoder on the ensemble's inputs -> the decoder's outputs."""
    tensors = dict(feeds)
    for stage in STAGES:
        tensors.update(run_stage(stage, {n: tensors[n] for n in specs[stage].input_names}))
    return {n: tensors[n] for n in specs[STAGES[-1]].output_names}


def numpy_stage(run_stage: RunStage, specs: Mapping[str, StageSpec], device: str = "cpu") -> RunStage:
    """A torch ``run_stage`` as a driver calls it: numpy in (each stage's inputs picked by name), numpy out."""
    def call(stage: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        tensors = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in specs[stage].input_names}
        return {k: v.detach().cpu().numpy() for k, v in run_stage(stage, tensors).items()}

    return call


def run_request(run_stage: RunStage, specs: Mapping[str, StageSpec], feeds: Mapping[str, Any],
                geometry: ModelGeometry, driver=None) -> dict:
    """One request, as the family's own model answers it: the chain once, or the family's driver
    running its stages in a loop (``run_stage`` then works on numpy arrays)."""
    if driver is None:
        return run_chain(run_stage, specs, feeds)
    return driver.run(run_stage, {k: np.asarray(v) for k, v in feeds.items()}, geometry)


def stage_calls_per_request(model: torch.nn.Module, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """How many times one request runs each stage: once each, or what the family's driver does
    (counted by running it once on the PyTorch stages)."""
    driver = families.get(model.geometry.family).driver
    if driver is None:
        return {s: 1 for s in STAGES}
    specs = stage_specs(model.geometry)
    counts = {s: 0 for s in STAGES}
    inner = numpy_stage(lambda s, t: torch_stage(model, specs[s], t), specs)

    def counting(stage: str, tensors):
        counts[stage] += 1
        return inner(stage, tensors)

    with torch.inference_mode():
        driver.run(counting, {k: np.asarray(v) for k, v in feeds.items()}, model.geometry)
    return counts


def torch_stage(model: torch.nn.Module, spec: StageSpec, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.<stage>`` on its spec's inputs, in order -> its outputs by name."""
    out = getattr(model, spec.stage)(*(tensors[n] for n in spec.input_names))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return dict(zip(spec.output_names, outs, strict=True))


@dataclass(frozen=True)
class BenchModel:
    config: str
    model: torch.nn.Module  # the family's network, eval mode; .encoder, .fusion, .decoder are the stages
    bundle: ModelBundle  # the python-target repository holding the same weights: manifest, conditioner, stage files
    weights: str  # "trained <sha12>" or "random, seed N"

    def __post_init__(self) -> None:
        assert self.model.geometry == self.bundle.geometry, (self.model.geometry, self.bundle.geometry)

    @property
    def family(self) -> str:  # names the ensemble "<family>" and its "<family>_<stage>" models
        return self.bundle.family.name

    @property
    def record(self) -> families.Family:
        return self.bundle.family

    @property
    def repository(self) -> Path:
        return self.bundle.repository

    @property
    def conditioner(self):
        return self.bundle.conditioner

    @property
    def cfg(self):  # the family's config dataclass
        return self.model.cfg

    @property
    def geometry(self) -> ModelGeometry:
        return self.bundle.geometry

    @property
    def specs(self) -> dict[str, StageSpec]:
        return stage_specs(self.geometry)

    @cached_property
    def user_values(self) -> dict[str, Any] | None:
        """The representative user inputs, or None when the conditioner refuses them."""
        return accepted_values(self.record, self.conditioner)

    def conditions(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The condition tensors [B, ...]: the conditioner's for ``user_values`` (the same for every
        image of the batch), else random within each condition's declared range."""
        specs = self.geometry.request_inputs
        if self.user_values is not None:
            tensors = self.conditioner.condition(self.user_values).tensors
            if all(t.name in tensors for t in specs):
                return {t.name: np.ascontiguousarray(np.repeat(np.asarray(tensors[t.name])[None], batch, axis=0))
                        for t in specs}
        from langcolor.export.onnx_export import sample_input

        return {t.name: np.ascontiguousarray(sample_input(t, batch, rng)) for t in specs}

    def inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The ensemble's inputs for ``batch`` images, the same for every path: a smooth photo-like
        image within its range and the family's conditions."""
        rng = np.random.default_rng(seed)
        image = self.geometry.image
        rng_lo_hi = image.value_range if image.value_range is not None else (0.0, 1.0)
        feeds = {image.name: smooth_plane((batch, *image.dims), rng_lo_hi, rng)}
        feeds.update(self.conditions(batch, rng))
        spec = ensemble_spec(self.geometry)
        return {n: feeds[n] for n in spec.input_names}

    @cached_property
    def stage_calls(self) -> dict[str, int]:
        """Stage runs per request (a driven family's decoder runs once per step of its loop)."""
        return stage_calls_per_request(self.model, self.inputs(1))

    def describe(self) -> dict:
        """What the run's JSON records about the network measured."""
        g = self.geometry
        out = {
            "family": self.family, "weights": self.weights, "repository": str(self.repository),
            "image_size": g.image_size, "feature_shape": list(g.feature_shape),
            "conditions": {t.name: list(t.dims) for t in g.request_inputs},
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "inputs": describe_values(self.user_values),
        }
        if self.record.driver is not None:
            out["stage_calls_per_request"] = self.stage_calls
        if g.tokens is not None:
            out["max_tokens"] = g.tokens.dims[0]
        if self.user_values and isinstance(self.user_values.get("caption"), str):
            out["caption"] = self.user_values["caption"]
        return out


# --- checkpoints and repositories --------------------------------------------------------------------


def _kept_assets(repo: Path, family: str) -> dict[str, str] | None:
    """The conditioner's files of an export kept in ``repo`` (a ``--workdir`` from an earlier run): a
    random network rebuilt from the same seed and the same files has the same hash, and is reused."""
    folder = Path(repo) / family / VERSION
    try:
        manifest = ModelManifest.load(folder / MANIFEST_FILE)
        return {k: v.decode("utf-8") for k, v in read_assets(folder, manifest).items()}
    except (OSError, ValueError, KeyError, TypeError, LangcolorError):
        return None


def random_checkpoint(family: str, config: str, seed: int = 0, assets: dict[str, str] | None = None):
    """``Checkpoint.random``, over ``assets`` when they fit the config (training a tokenizer twice is
    not always byte-identical, so a kept export's own files are reused)."""
    from langcolor.export.checkpoint import Checkpoint, encoded_assets

    if assets is not None:
        record = families.get(family)
        try:
            geometry = record.geometry(record.config(config), encoded_assets(assets))
            record.conditioner(geometry, encoded_assets(assets))
        except (LangcolorError, ValueError, KeyError):
            assets = None  # another config's files
    return Checkpoint.random(family, config, seed, assets)


def _python_target_export(repo: Path, family: str, sha256: str) -> bool:
    """``repo`` holds ``family`` with these weights, its stages on the langcolor backend (the target
    the bundled tritonserver runs)."""
    from langcolor.client import names
    from langcolor.export.triton_config import CONFIG_FILE, parse

    try:
        manifest = ModelManifest.load(Path(repo) / family / VERSION / MANIFEST_FILE)
        if manifest.weights_sha256 != sha256 or manifest.geometry.family != family:
            return False
        specs = stage_specs(manifest.geometry)
        return all(parse((Path(repo) / specs[s].model_name / CONFIG_FILE).read_text()).backend == names.BACKEND
                   for s in STAGES)
    except Exception:  # missing, unreadable or unparsable: not a usable export
        return False


def _export(ckpt, model: torch.nn.Module, out: Path, config: str, weights: str) -> None:
    from langcolor.export.triton_config import Target
    from langcolor.export.triton_repo import ExportEntry, write_repository

    entry = ExportEntry(model, ckpt.assets, ckpt.sha256, {"step": ckpt.step, "config": config, "weights": weights})
    write_repository([entry], Path(out), target=Target(backend="python"))


def export_random(config: str, out_dir: Path, seed: int = 0, family: str = families.DEFAULT_FAMILY) -> BenchModel:
    """Random-weight ``family`` network of ``config`` and its python-target repository in ``out_dir``."""
    out_dir = Path(out_dir)
    ckpt = random_checkpoint(family, config, seed, _kept_assets(out_dir, family))
    model = ckpt.build_model()
    weights = f"random, seed {seed}"
    if _python_target_export(out_dir, family, ckpt.sha256):  # same seed, same code: a --workdir kept from a previous run
        log.info("reusing %s (weights sha256 %s)", out_dir, ckpt.sha256[:12])
    else:
        log.info("exporting random-weight %s '%s' network to %s", family, config, out_dir)
        _export(ckpt, model, out_dir, config, weights)
    return BenchModel(config, model, ModelBundle.load(out_dir, family=family), weights)


def load_model(config: str, workdir: Path, seed: int = 0, family: str = families.DEFAULT_FAMILY) -> BenchModel:
    """``small`` -> the shipped checkpoint (and repository when it holds it); other configs -> random
    weights exported into ``workdir``."""
    record = families.get(family)  # a ModelNotFoundError naming the registered families
    record.config(config)  # ... and one naming the family's configs
    out = Path(workdir) / f"repo_{family}_{config}"
    if config != "small":
        return export_random(config, out, seed, family)
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint

    path = default_weights_path(family, "small")
    if not path.is_file():
        log.warning("no shipped weights at %s: measuring 'small' with random weights", path)
        return export_random(config, out, seed, family)
    ckpt = load_checkpoint(path)
    if ckpt.family != family:
        raise ModelNotFoundError(f"{path} holds a {ckpt.family!r} network, not {family!r}")
    model = ckpt.build_model()
    weights = f"trained {ckpt.sha256[:12]}"
    for repo in (default_model_repository(), out):
        if _python_target_export(repo, family, ckpt.sha256):
            return BenchModel(config, model, ModelBundle.load(repo, family=family), weights)
    log.warning("%s does not hold these weights as a python-target export; exporting them to %s",
                default_model_repository(), out)
    _export(ckpt, model, out, config, weights)
    return BenchModel(config, model, ModelBundle.load(out, family=family), weights)


def tiny_model(workdir: Path, seed: int = 0, family: str = families.DEFAULT_FAMILY) -> BenchModel:
    """The ``tiny`` network for tests: seconds to export and to measure."""
    return export_random("tiny", Path(workdir) / f"repo_{family}_tiny", seed, family)
