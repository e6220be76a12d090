"""What a batch job works on: the list of (input, caption, output) triples, checked before any work.

A source is a folder (walked recursively, hidden entries skipped) or a manifest (CSV with header
``path,caption`` or JSONL with keys ``path`` and ``caption``) whose paths are relative to the
manifest's folder. With a folder, ``--captions`` names such a manifest for that folder.

Every path is checked here, once: a manifest entry that leaves the source tree (``../``, an
absolute path elsewhere, a symlink pointing out), an output folder inside the source tree (or the
source inside the output folder), and two inputs that would write the same output are refused
with a ``LangcolorError`` that names the offending entries, before a single image is touched.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import LangcolorError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
# --format value -> (PIL format name, file extension); "same" keeps the input's format.
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg")}
# Formats written as themselves under "same"; BMP and WebP inputs (no EXIF/ICC there) become PNG.
_SAME_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
STATE_DIR = ".langcolor"  # in the output folder: records, lock; never an input or an output path
_MAX_SHOWN = 5  # offending entries listed in one refusal message


@dataclass(frozen=True)
class BatchItem:
    rel: str  # input path relative to the source root, POSIX separators (report, records)
    path: Path  # absolute input path
    caption: str | None  # None: no caption and no default; reported as skipped
    out_rel: str  # output path relative to the output folder
    out_format: str  # PIL format name of the output


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    path: str
    caption: str | None


@dataclass(frozen=True)
class BatchPlan:
    root: Path  # the source tree every input lies in
    items: tuple[BatchItem, ...]
    missing: tuple[tuple[str, str], ...]  # (manifest path, reason): listed but not a readable file


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Parse a CSV (header ``path,caption``) or JSONL manifest; raise naming the bad line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise LangcolorError(f"{path}: a manifest must end in .csv or .jsonl")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise LangcolorError(f"cannot read manifest {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise LangcolorError(f"{path}:{line}: manifest is not valid UTF-8") from e
    entries = _read_csv(path, text) if suffix == ".csv" else _read_jsonl(path, text)
    log.info("%s: %d manifest entries", path, len(entries))
    return entries


def _caption(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LangcolorError(f"{where}: caption must be a string, got {type(value).__name__}")
    return value if value.strip() else None  # blank = no caption: default caption or skipped


def _read_csv(path: Path, text: str) -> list[ManifestEntry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in fields or "caption" not in fields:
        raise LangcolorError(f"{path}:1: CSV manifest needs a header with columns 'path' and 'caption', got {fields}")
    reader.fieldnames = fields
    entries = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        p = (row.get("path") or "").strip()
        if not p:
            raise LangcolorError(f"{where}: empty path")
        entries.append(ManifestEntry(reader.line_num, p, _caption(row.get("caption"), where)))
    return entries


def _read_jsonl(path: Path, text: str) -> list[ManifestEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LangcolorError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"].strip():
            raise LangcolorError(f"{where}: each line must be an object with a string 'path'")
        entries.append(ManifestEntry(number, obj["path"].strip(), _caption(obj.get("caption"), where)))
    return entries


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _refuse(what: str, offenders: list[str]) -> LangcolorError:
    shown = "; ".join(offenders[:_MAX_SHOWN])
    more = f" (and {len(offenders) - _MAX_SHOWN} more)" if len(offenders) > _MAX_SHOWN else ""
    return LangcolorError(f"{what}: {shown}{more}")


def _resolve_entry(root: Path, entry: ManifestEntry, manifest: Path) -> tuple[str, Path] | str:
    """(relative POSIX path, absolute path) of a manifest entry, or why it leaves the tree."""
    where = f"{manifest}:{entry.line}: {entry.path!r}"
    raw = Path(entry.path)
    if "\x00" in entry.path:
        return f"{where} contains a NUL byte"
    candidate = raw if raw.is_absolute() else root / raw
    # Lexical check first (refuses '../' even when the target does not exist), then the real one
    # (refuses a symlink that points out of the tree).
    lexical = Path(os.path.normpath(candidate))
    if not _inside(lexical, root) or not _inside(candidate.resolve(), root):
        return f"{where} leaves the source tree {root}"
    rel = lexical.relative_to(root)
    if rel == Path("."):
        return f"{where} is the source folder itself"
    if rel.parts[0] == STATE_DIR:
        return f"{where} is inside a {STATE_DIR} folder, reserved for batch records"
    return PurePosixPath(*rel.parts).as_posix(), lexical


def _walk(root: Path) -> list[tuple[str, Path]]:
    found = []
    def unreadable(e: OSError) -> None:
        log.warning("%s: cannot list folder (%s), its images are not included", e.filename, e.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            if not _inside(path.resolve(), root):
                log.warning("%s: symlink leaves the source tree, ignored", path)
                continue
            rel = path.relative_to(root)
            found.append((PurePosixPath(*rel.parts).as_posix(), path))
    return found


def output_name(rel: str, fmt: str) -> tuple[str, str]:
    """(output relative path, PIL format) for an input relative path under ``--format fmt``."""
    pure = PurePosixPath(rel)
    if fmt == "same":
        suffix = pure.suffix.lower()
        if suffix in _SAME_FORMAT:
            return rel, _SAME_FORMAT[suffix]
        fmt = "png"  # BMP, WebP, or a manifest entry without a known image suffix
    pil_format, ext = OUTPUT_FORMATS[fmt]
    return pure.with_suffix(ext).as_posix() if pure.suffix else rel + ext, pil_format


def plan_batch(
    source: Path,
    output: Path,
    captions: Path | None = None,
    default_caption: str | None = None,
    fmt: str = "png",
) -> BatchPlan:
    """Everything the job will do, with every path checked; raises ``LangcolorError`` to refuse."""
    if fmt != "same" and fmt not in OUTPUT_FORMATS:
        raise LangcolorError(f"unknown output format {fmt!r}; choose png, jpeg or same")
    source = Path(source).absolute()
    if not source.exists():
        raise LangcolorError(f"source {source} does not exist")
    manifest: Path | None
    if source.is_dir():
        root, manifest = source.resolve(), (Path(captions).absolute() if captions else None)
    else:
        if captions:
            raise LangcolorError("--captions goes with a source folder; a manifest source already holds the captions")
        root, manifest = source.parent.resolve(), source
    out = Path(output).absolute().resolve()
    if _inside(out, root) or _inside(root, out):
        raise LangcolorError(f"output folder {out} and source tree {root} overlap; choose an output folder outside it")
    if default_caption is not None and not default_caption.strip():
        default_caption = None

    entries = read_manifest(manifest) if manifest else []
    refused: list[str] = []
    listed: dict[str, tuple[Path, str | None]] = {}
    for entry in entries:
        resolved = _resolve_entry(root, entry, manifest)  # type: ignore[arg-type]
        if isinstance(resolved, str):
            refused.append(resolved)
            continue
        rel, path = resolved
        if rel in listed:
            refused.append(f"{manifest}:{entry.line}: {rel!r} listed twice")
        listed[rel] = (path, entry.caption)
    if refused:
        raise _refuse("manifest refused", refused)

    candidates: dict[str, tuple[Path, str | None]] = {}
    if source.is_dir():
        candidates.update({rel: (path, None) for rel, path in _walk(root)})
    candidates.update(listed)  # a manifest caption wins over "walked, no caption"

    items, missing, by_output = [], [], {}
    for rel, (path, caption) in sorted(candidates.items()):
        if not path.is_file():
            missing.append((rel, "listed in the manifest but not found" if path.exists() is False else "not a regular file"))
            continue
        out_rel, out_format = output_name(rel, fmt)
        key = out_rel.casefold()  # a.png and A.PNG collide on case-insensitive disks
        if key in by_output:
            refused.append(f"{by_output[key]!r} and {rel!r} would both write {out_rel!r}")
            continue
        by_output[key] = rel
        items.append(BatchItem(rel, path, caption if caption is not None else default_caption, out_rel, out_format))
    if refused:
        raise _refuse("output path collision (use --format same, or rename)", refused)
    return BatchPlan(root, tuple(items), tuple(missing))
