"""One model repository holding several families (``lcode`` and ``lcoins``), written atomically.

``triton_repo.write_repository`` writes a whole repository for one network and swaps it in. For
several checkpoints each is exported (and parity-checked) into its own scratch repository first;
their ``<family>*`` folders are then gathered into one tree, with the ``colorize`` endpoint of the
first checkpoint (its family is the default: requests without ``MODEL`` go to its ensemble), its
config rewritten to list every family gathered (what ``MODEL`` may name), and that tree replaces
the destination in one rename. A failure anywhere leaves the old repository as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from langcolor.client.errors import LangcolorError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS

from .checkpoint import Checkpoint
from .triton_config import COLORIZE_MODEL, CONFIG_FILE, Target, colorize_config
from .triton_repo import ExportedRepository, _check_replaceable, _swap_in, write_model_repository

log = logging.getLogger(__name__)


def _extra(ckpt: Checkpoint, path: Path) -> dict:
    return {"config": ckpt.config.name, "checkpoint": Path(path).name, "step": ckpt.step}


def write_multi_repository(
    checkpoints: list[tuple[Path, Checkpoint]], out_dir: Path, target: Target = Target(), **kw
) -> list[ExportedRepository]:
    """Export every ``(path, checkpoint)`` into one repository at ``out_dir``; -> one result per family."""
    families = [c.family for _, c in checkpoints]
    if len(set(families)) != len(families):
        raise LangcolorError(f"one checkpoint per family: got {', '.join(families)}")
    out_dir = Path(out_dir).resolve()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.multi-", dir=out_dir.parent))
    try:
        combined = scratch / "repository"
        combined.mkdir()
        results = []
        for i, (path, ckpt) in enumerate(checkpoints):
            part = write_model_repository(
                ckpt.build_model(), ckpt.tokenizer, ckpt.sha256, scratch / f"part{i}",
                target=target, extra=_extra(ckpt, path), **kw,
            )
            for entry in sorted(part.root.iterdir()):
                if entry.name == COLORIZE_MODEL and i > 0:
                    continue  # the endpoint calls the first (default) family
                (combined / entry.name).parent.mkdir(parents=True, exist_ok=True)
                entry.rename(combined / entry.name)
            results.append(ExportedRepository(out_dir, part.manifest, part.target, part.parity))
        # The endpoint serves every family it sits beside; the first stays the default.
        (combined / COLORIZE_MODEL / CONFIG_FILE).write_text(colorize_config(
            results[0].manifest.geometry, target, kw.get("max_pixels", DEFAULT_MAX_PIXELS), families=tuple(families)
        ))
        os.chmod(combined, 0o755)
        _swap_in(combined, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("wrote model repository %s with %s", out_dir, ", ".join(families))
    return results
