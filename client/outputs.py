"""Writing outputs: checked before any work, written atomically, never half a file.

Every writer of the product (``langcolor colorize``, ``Colorizer.save``, the batch pipeline and its
records) goes through ``write_atomic``: the bytes go to a hidden temporary file in the target's own
folder, are fsynced, then renamed over the target, so a reader never sees half an image. A run killed
mid-write leaves only the temporary file (named ``.<name>.langcolor-tmp-<pid>-<hex>``), which the next
batch run removes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import OutputError
from .imageio import format_for_path

TMP_MARK = ".langcolor-tmp-"


def check_output_path(path: str | Path) -> Path:
    """Fail before any work if ``path`` cannot receive a file: a directory, a missing or read-only folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output '{path}' is a directory; give a file name such as {path / 'out.png'}")
    format_for_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{parent}' is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"output '{path}' exists and is read-only")
    return path


def write_atomic(path: str | Path, data: bytes, make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file in the same folder; ``OutputError``
    names the path and the reason when the disk or the folder refuses."""
    path = Path(path)
    if make_parents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create folder '{path.parent}': {e.strerror or e}") from e
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # readable like any file the user writes (reading os.umask() would change it process-wide)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write output '{path}': {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
