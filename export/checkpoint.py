"""Checkpoints that carry their own family, config, conditioner assets and content hash.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``:

    format        "langcolor-v2" ("langcolor-lcode-v1" files, which kept a caption tokenizer in
                  ``tokenizer`` and its size in ``vocab_size``, still load)
    family        a registered family name
    config        the family's config as a dict (the network is rebuilt from this, never from CLI defaults)
    assets        {file name: text} the conditioner needs (a caption family's tokenizer.json; {} for none)
    state_dict    model weights and BatchNorm running statistics
    step          optimisation steps done
    sha256        content hash of config + assets + weights (see ``content_hash``)
    meta          free-form provenance (seed, options, training time, data)
    optimizer / scheduler   only in resumable checkpoints, dropped from shipped weights
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langcolor.client import families
from langcolor.client.errors import ModelNotFoundError
from langcolor.client.families import DEFAULT_FAMILY, Family
from langcolor.client.spec import TOKENIZER_FILE, ModelGeometry

FORMAT = "langcolor-v2"
_LEGACY_FORMAT = "langcolor-lcode-v1"


def family_of(model: nn.Module) -> Family:
    """The registered family a network belongs to (its geometry names it)."""
    return families.get(model.geometry.family)


def encoded_assets(assets: dict[str, str]) -> dict[str, bytes]:
    """Asset texts as the bytes written to (and hashed in) a model repository."""
    return {name: text.encode("utf-8") for name, text in assets.items()}


@dataclass(frozen=True)
class Checkpoint:
    family: str
    config: Any  # the family's config dataclass
    state_dict: dict
    assets: dict[str, str]
    step: int
    sha256: str
    meta: dict = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None

    @property
    def record(self) -> Family:
        return families.get(self.family)

    @property
    def geometry(self) -> ModelGeometry:
        return self.record.geometry(self.config, encoded_assets(self.assets))

    def conditioner(self):
        return self.record.conditioner(self.geometry, encoded_assets(self.assets))

    @property
    def tokenizer(self):
        """A caption family's tokenizer (its conditioner's)."""
        return self.conditioner().tokenizer

    @classmethod
    def random(cls, family: str, config: str, seed: int = 0, assets: dict[str, str] | None = None) -> "Checkpoint":
        """A freshly initialised network of ``family``/``config`` (torch seeded with ``seed``), with
        ``assets`` or those its training would make; for tests and benchmarks of sizes never trained."""
        from .train import TrainOptions

        record = families.get(family)
        cfg = record.config(config)
        if assets is None:
            assets = record.training().make_assets(cfg, TrainOptions(config=config, family=family, seed=seed))
        geometry = record.geometry(cfg, encoded_assets(assets))
        torch.manual_seed(seed)
        model = record.network().build(cfg, geometry).eval()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(family, cfg, state, assets, 0, content_hash(cfg, assets, state), {"weights": f"random, seed {seed}"})

    def build_model(self) -> nn.Module:
        """The family's network in eval mode with these weights."""
        model = self.record.network().build(self.config, self.geometry)
        model.load_state_dict(self.state_dict)
        return model.eval()


def content_hash(config: Any, assets: dict[str, str], state_dict: dict) -> str:
    """sha256 over the config, the asset texts (in name order) and every tensor (name, dtype, shape,
    bytes), in name order. A loaded checkpoint is hashed with its config dict as stored, so it stays
    valid when the config class gains a field. With one asset, a caption tokenizer, the digest is the
    one the first checkpoints were hashed with."""
    h = hashlib.sha256()
    raw = config if isinstance(config, dict) else config.to_dict()
    h.update(json.dumps(raw, sort_keys=True).encode())
    for name in sorted(assets):
        h.update(assets[name].encode("utf-8"))
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    assets: dict[str, str],
    step: int,
    meta: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> str:
    """Write atomically (temp file + rename, so an interrupted save never leaves half a file); -> sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    digest = content_hash(model.cfg.to_dict(), assets, state)
    payload = {
        "format": FORMAT,
        "family": family_of(model).name,
        "config": model.cfg.to_dict(),
        "assets": dict(assets),
        "state_dict": state,
        "step": int(step),
        "sha256": digest,
        "meta": dict(meta or {}),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return digest


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; raise ModelNotFoundError if missing or altered."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise ModelNotFoundError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, _LEGACY_FORMAT):
        raise ModelNotFoundError(f"{path} is not a {FORMAT} checkpoint")
    name = raw.get("family", DEFAULT_FAMILY)  # the first checkpoints predate families
    try:
        record = families.get(name)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"{path}: {e}") from e
    assets = dict(raw["assets"]) if "assets" in raw else {TOKENIZER_FILE: raw["tokenizer"]}
    if verify:
        digest = content_hash(raw["config"], assets, raw["state_dict"])
        if digest != raw["sha256"]:
            raise ModelNotFoundError(f"checkpoint {path} fails its content hash (stored {raw['sha256'][:12]}, got {digest[:12]})")
    return Checkpoint(
        family=record.name,
        config=record.config_from_dict(raw["config"]),
        state_dict=raw["state_dict"],
        assets=assets,
        step=int(raw["step"]),
        sha256=raw["sha256"],
        meta=dict(raw.get("meta", {})),
        optimizer=raw.get("optimizer"),
        scheduler=raw.get("scheduler"),
    )


def default_weights_path(family: str = DEFAULT_FAMILY, config_name: str = "small") -> Path:
    """Shipped weights inside the package: export/weights/<family>_<config>.pt."""
    return Path(__file__).resolve().parent / "weights" / f"{family}_{config_name}.pt"


def shipped_weights() -> list[Path]:
    """Every family's shipped ``small`` weights that are present, the default family first."""
    return [p for p in (default_weights_path(name) for name in families.names()) if p.is_file()]
