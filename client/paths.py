"""Where the shipped model repository lives, and one clear error when it is not there."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError

ENV_MODEL_REPOSITORY = "LANGCOLOR_MODEL_REPOSITORY"
# client/paths.py -> repository root; the committed model_repository/ sits beside client/.
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_model_repository() -> Path:
    """``$LANGCOLOR_MODEL_REPOSITORY`` if set, else the repository's own ``model_repository/``."""
    override = os.environ.get(ENV_MODEL_REPOSITORY)
    return Path(override).expanduser() if override else REPO_ROOT / "model_repository"


def resolve_model_repository(path: str | Path | None = None) -> Path:
    """The model repository to use; raises ``ModelNotFoundError`` saying how to fix a missing one."""
    repo = Path(path).expanduser() if path is not None else default_model_repository()
    if not repo.is_dir():
        where = (
            "given with --model-repository"
            if path is not None
            else f"from ${ENV_MODEL_REPOSITORY}"
            if os.environ.get(ENV_MODEL_REPOSITORY)
            else "the default"
        )
        raise ModelNotFoundError(
            f"model repository {repo} ({where}) does not exist; pass --model-repository DIR, set "
            f"{ENV_MODEL_REPOSITORY}, or generate one with `langcolor export`"
        )
    return repo
