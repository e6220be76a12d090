"""Checkpoints that carry their own config, tokenizer and content hash.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``:

    format        "langcolor-lcode-v1" (the name predates the second family; both use it)
    family        "lcode" or "lcoins" (absent in the first L-CoDe checkpoints: "lcode")
    config        LCoDeConfig or LCoInsConfig as a dict (the network is rebuilt from this, never from CLI defaults)
    vocab_size    int
    state_dict    model weights and BatchNorm running statistics
    tokenizer     the exact tokenizer.json text
    step          optimisation steps done
    sha256        content hash of config + tokenizer + weights (see ``content_hash``)
    meta          free-form provenance (seed, command, training time, data)
    optimizer / scheduler   only in resumable checkpoints, dropped from shipped weights
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from langcolor.client.errors import ModelNotFoundError
from langcolor.client.tokenizer import CaptionTokenizer

from torch import nn

from .config import FAMILY, LCOINS_FAMILY, LCoDeConfig, LCoInsConfig, config_from_dict
from .lcode import LCoDe
from .lcoins import LCoIns

FORMAT = "langcolor-lcode-v1"
MODEL_CLASSES: dict[str, type[nn.Module]] = {FAMILY: LCoDe, LCOINS_FAMILY: LCoIns}


def family_of(model_or_config) -> str:
    cfg = getattr(model_or_config, "cfg", model_or_config)
    return LCOINS_FAMILY if isinstance(cfg, LCoInsConfig) else FAMILY


def build_network(family: str, config, vocab_size: int) -> nn.Module:
    """A freshly initialised network of ``family`` (torch's current seed decides the weights)."""
    return MODEL_CLASSES[family](config, vocab_size)


@dataclass(frozen=True)
class Checkpoint:
    config: LCoDeConfig | LCoInsConfig
    vocab_size: int
    state_dict: dict
    tokenizer_json: str
    step: int
    sha256: str
    meta: dict = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    family: str = FAMILY

    @property
    def tokenizer(self) -> CaptionTokenizer:
        return CaptionTokenizer.from_str(self.tokenizer_json)

    def build_model(self) -> nn.Module:
        """The network (LCoDe or LCoIns) in eval mode with these weights."""
        model = build_network(self.family, self.config, self.vocab_size)
        model.load_state_dict(self.state_dict)
        return model.eval()


def content_hash(config: LCoDeConfig | LCoInsConfig | dict, tokenizer_json: str, state_dict: dict) -> str:
    """sha256 over the config, the tokenizer text and every tensor (name, dtype, shape, bytes), in name
    order. A loaded checkpoint is hashed with its config dict as stored, so it stays valid when the
    config class gains a field."""
    h = hashlib.sha256()
    raw = config if isinstance(config, dict) else config.to_dict()
    h.update(json.dumps(raw, sort_keys=True).encode())
    h.update(tokenizer_json.encode("utf-8"))
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    tokenizer: CaptionTokenizer,
    step: int,
    meta: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> str:
    """Write atomically (temp file + rename, so an interrupted save never leaves half a file); -> sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    digest = content_hash(model.cfg.to_dict(), tokenizer.to_str(), state)
    payload = {
        "format": FORMAT,
        "family": family_of(model),
        "config": model.cfg.to_dict(),
        "vocab_size": int(model.vocab_size),
        "state_dict": state,
        "tokenizer": tokenizer.to_str(),
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
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelNotFoundError(f"{path} is not a {FORMAT} checkpoint")
    family = raw.get("family", FAMILY)
    if family not in MODEL_CLASSES:
        raise ModelNotFoundError(f"{path}: unknown model family {family!r}")
    config = config_from_dict(family, raw["config"])
    if verify:
        digest = content_hash(raw["config"], raw["tokenizer"], raw["state_dict"])
        if digest != raw["sha256"]:
            raise ModelNotFoundError(f"checkpoint {path} fails its content hash (stored {raw['sha256'][:12]}, got {digest[:12]})")
    return Checkpoint(
        config=config,
        vocab_size=int(raw["vocab_size"]),
        state_dict=raw["state_dict"],
        tokenizer_json=raw["tokenizer"],
        step=int(raw["step"]),
        sha256=raw["sha256"],
        meta=dict(raw.get("meta", {})),
        optimizer=raw.get("optimizer"),
        scheduler=raw.get("scheduler"),
        family=family,
    )


def default_weights_path(config_name: str = "small", family: str = FAMILY) -> Path:
    """Shipped weights inside the package: export/weights/<family>_<config>.pt."""
    return Path(__file__).resolve().parent / "weights" / f"{family}_{config_name}.pt"
