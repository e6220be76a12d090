"""Where a file or a figure came from: the git revision of the code that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def git_revision(short: bool = False) -> str:
    """``git rev-parse HEAD`` of this checkout, with ``+dirty`` when tracked files have changes;
    "unknown" outside a git checkout (an installed wheel)."""
    try:
        args = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
        rev = subprocess.run(args, cwd=_HERE, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_HERE,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
