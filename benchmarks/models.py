"""The networks a benchmark run measures: the PyTorch modules and a model repository exported from them.

One model family per run (``lcode`` or ``lcoins``; ``export/config.py`` FAMILY_CONFIGS holds their
configs). ``full`` (the paper's size) has no trained weights: it gets random weights, exported with
the project's own exporter (python backend) into a temporary folder, so every path runs the same ONNX
files and the same arithmetic. ``small`` is the shipped configuration: the checkpoint
``export/weights/<family>_small.pt`` and, when its weights hash matches, the committed
``model_repository/``; without the checkpoint it falls back to random weights (said in the JSON).
A random-weight network gets a tokenizer trained on a few synthetic captions (word-level for
``lcode``, WordPiece for ``lcoins``): the vocabulary only sizes the embedding table, not the work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from langcolor.client.errors import CaptionError, LangcolorError
from langcolor.client.paths import default_model_repository
from langcolor.client.spec import MANIFEST_FILE, PAD_ID, TOKENIZER_FILE, ModelGeometry
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export.config import FAMILY, FAMILY_CONFIGS, LCOINS_FAMILY, get_config

log = logging.getLogger(__name__)

CAPTION = "a red circle on a blue background"  # words the shipped synthetic tokenizer knows
CAPTION_WORDS = 8  # caption length used when the caption's words are unknown to a random tokenizer


@dataclass(frozen=True)
class BenchModel:
    config: str
    model: torch.nn.Module  # LCoDe or LCoIns, eval mode; .encoder, .fusion, .decoder are the stages
    tokenizer: CaptionTokenizer
    repository: Path  # python-backend Triton repository with the same weights
    weights: str  # "trained <sha12>" or "random, seed N"
    family: str = FAMILY  # "lcode" or "lcoins": names the ensemble "<family>" and its "<family>_<stage>" models

    def __post_init__(self) -> None:
        assert self.geometry.family == self.family, (self.geometry.family, self.family)

    @property
    def cfg(self):  # LCoDeConfig or LCoInsConfig
        return self.model.cfg

    @property
    def geometry(self) -> ModelGeometry:
        return self.model.geometry

    def inputs(self, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The same L [B,1,S,S] in [0,100] and tokens [B,T] for every path: a smooth random photo-like L."""
        rng = np.random.default_rng(seed)
        s = self.geometry.image_size
        coarse = rng.uniform(0.0, 100.0, size=(batch, 1, 8, 8)).astype(np.float32)  # [B,1,8,8]
        L = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(s, s), mode="bilinear").numpy()
        L = np.clip(L, 0.0, 100.0).astype(np.float32)  # [B,1,S,S]
        tokens = np.repeat(self.caption_ids(rng)[None], batch, axis=0)  # [B,T]
        return np.ascontiguousarray(L), np.ascontiguousarray(tokens)

    def caption_ids(self, rng: np.random.Generator) -> np.ndarray:
        try:
            return self.tokenizer.encode(CAPTION).ids  # [T]
        except CaptionError:
            ids = np.full(self.geometry.max_tokens, PAD_ID, dtype=np.int64)
            n = min(CAPTION_WORDS, self.geometry.max_tokens)
            ids[:n] = rng.integers(1, self.geometry.vocab_size, size=n)
            return ids


def _captions() -> list[str]:
    from langcolor.export.triton_repo import TINY_CAPTIONS

    return list(TINY_CAPTIONS)


def _random_tokenizer(family: str, cfg, kept: Path) -> CaptionTokenizer:
    """A kept export's own tokenizer (training one from the same captions is not byte-identical run to
    run), else one trained on the synthetic captions: word-level (L-CoDe) or WordPiece (L-CoIns)."""
    if kept.is_file():
        tokenizer = CaptionTokenizer.from_file(kept)
        if tokenizer.max_tokens == cfg.max_tokens:
            return tokenizer
    if family == LCOINS_FAMILY:
        return CaptionTokenizer.train_wordpiece(_captions(), cfg.max_tokens, cfg.wordpiece_vocab)
    return CaptionTokenizer.train(_captions(), cfg.max_tokens)


def export_random(config: str, out_dir: Path, seed: int = 0, family: str = FAMILY) -> BenchModel:
    """Random-weight ``family`` network of ``config`` and its python-backend repository in ``out_dir``."""
    from langcolor.export.checkpoint import build_network, content_hash
    from langcolor.export.triton_config import Target
    from langcolor.export.triton_repo import write_model_repository

    cfg = get_config(config, family)
    tokenizer = _random_tokenizer(family, cfg, Path(out_dir) / family / "1" / TOKENIZER_FILE)
    torch.manual_seed(seed)
    model = build_network(family, cfg, tokenizer.vocab_size).eval()
    sha = content_hash(cfg, tokenizer.to_str(), model.state_dict())
    weights = f"random, seed {seed}"
    if _exported_with(Path(out_dir), sha, family):  # same seed, same code: a --workdir kept from a previous run
        log.info("reusing %s (weights sha256 %s)", out_dir, sha[:12])
        return BenchModel(config, model, tokenizer, Path(out_dir), weights, family)
    log.info("exporting random-weight %s '%s' network to %s", family, config, out_dir)
    write_model_repository(
        model, tokenizer, sha, Path(out_dir), target=Target(backend="python"),
        extra={"config": config, "weights": weights},
    )
    return BenchModel(config, model, tokenizer, Path(out_dir), weights, family)


def _exported_with(repo: Path, sha256: str, family: str) -> bool:
    manifest = repo / family / "1" / MANIFEST_FILE
    return manifest.is_file() and json.loads(manifest.read_text()).get("weights_sha256") == sha256


def _shipped_repository_matches(repo: Path, sha256: str, family: str) -> bool:
    stages = [repo / f"{family}_{s}" / "config.pbtxt" for s in ("encoder", "fusion", "decoder")]
    if not all(p.is_file() and 'backend: "python"' in p.read_text() for p in stages):
        return False
    return _exported_with(repo, sha256, family)


def load_model(config: str, workdir: Path, seed: int = 0, family: str = FAMILY) -> BenchModel:
    """``full`` -> random export into ``workdir``; ``small`` -> shipped checkpoint and repository."""
    if family not in FAMILY_CONFIGS:
        raise LangcolorError(f"unknown model family {family!r}; choose from {', '.join(FAMILY_CONFIGS)}")
    get_config(config, family)  # a LangcolorError naming the family's configs
    out = Path(workdir) / f"repo_{family}_{config}"
    if config != "small":
        return export_random(config, out, seed, family)
    from langcolor.export.checkpoint import default_weights_path, load_checkpoint
    from langcolor.export.triton_config import Target
    from langcolor.export.triton_repo import write_model_repository

    path = default_weights_path("small", family)
    if not path.is_file():
        log.warning("no shipped weights at %s: measuring 'small' with random weights", path)
        return export_random(config, out, seed, family)
    ckpt = load_checkpoint(path)
    if ckpt.family != family:
        raise LangcolorError(f"{path} holds a {ckpt.family!r} network, not {family!r}")
    model = ckpt.build_model()
    weights = f"trained {ckpt.sha256[:12]}"
    shipped = default_model_repository()
    if _shipped_repository_matches(shipped, ckpt.sha256, family):
        return BenchModel(config, model, ckpt.tokenizer, shipped, weights, family)
    if _exported_with(out, ckpt.sha256, family):
        return BenchModel(config, model, ckpt.tokenizer, out, weights, family)
    log.warning("%s does not hold these weights as a python-backend export; exporting them to %s", shipped, out)
    write_model_repository(model, ckpt.tokenizer, ckpt.sha256, out, target=Target(backend="python"),
                           extra={"config": config, "weights": weights})
    return BenchModel(config, model, ckpt.tokenizer, out, weights, family)


def tiny_model(workdir: Path, seed: int = 0, family: str = FAMILY) -> BenchModel:
    """The ``tiny`` network for tests: seconds to export and to measure."""
    return export_random("tiny", Path(workdir) / f"repo_{family}_tiny", seed, family)
