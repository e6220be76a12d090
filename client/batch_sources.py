"""What a batch job works on: the list of (input, what the model is told, output), checked before any work.

A source is a folder (walked recursively, hidden entries skipped) or a manifest (CSV with a header
``path,<input>,...`` or JSONL with keys ``path`` and the inputs) whose paths are relative to the
manifest's folder. The inputs are the model family's (``caption``, ``reference``, ...): text as it
is, images as paths relative to the manifest's folder, inside the source tree like the photos. With a
folder, ``--manifest`` (or ``--captions``) names such a manifest for that folder. Values given for
the whole run (``--caption``, ``--reference``) fill what a manifest line leaves blank.

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
from .families import IMAGE, InputField

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
    inputs: dict[str, str] | None  # field -> text, or absolute path of an image; None: a required one is missing (skipped)
    out_rel: str  # output path relative to the output folder
    out_format: str  # PIL format name of the output
    missing_input: str = ""  # the first required input it lacks, when skipped


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    path: str
    values: dict[str, str]  # input field -> its value as written (blank values left out)


@dataclass(frozen=True)
class BatchPlan:
    root: Path  # the source tree every input lies in
    items: tuple[BatchItem, ...]
    missing: tuple[tuple[str, str], ...]  # (manifest path, reason): listed but not a readable file


def read_manifest(path: Path, fields: tuple[InputField, ...]) -> list[ManifestEntry]:
    """Parse a CSV (header ``path`` plus input columns) or JSONL manifest; raise naming the bad line."""
    path = Path(path)
    if path.suffix.lower() not in MANIFEST_EXTENSIONS:
        raise LangcolorError(f"{path}: a manifest must end in .csv or .jsonl")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LangcolorError(f"cannot read manifest {path}: {e.strerror or e}") from e
    return parse_manifest(path, data, fields)


def parse_manifest(path: Path | str, data: bytes, fields: tuple[InputField, ...]) -> list[ManifestEntry]:
    """``read_manifest`` on a manifest's bytes (``path`` names it in messages and gives its suffix),
    for a manifest that is not a local file (an object in a bucket)."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise LangcolorError(f"{path}: a manifest must end in .csv or .jsonl")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LangcolorError(f"{path}:{line}: manifest is not valid UTF-8") from e
    names = tuple(f.name for f in fields)
    entries = _read_csv(path, text, names) if suffix == ".csv" else _read_jsonl(path, text, names)
    log.info("%s: %d manifest entries", path, len(entries))
    return entries


def _value(key: str, value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LangcolorError(f"{where}: {key} must be a string, got {type(value).__name__}")
    return value if value.strip() else None  # blank = not given: the run's value, or skipped


def _values(raw: dict, names: tuple[str, ...], where: str) -> dict[str, str]:
    out = {}
    for key in names:
        value = _value(key, raw.get(key), where)
        if value is not None:
            out[key] = value
    return out


def _read_csv(path: Path, text: str, names: tuple[str, ...]) -> list[ManifestEntry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in columns:
        want = ", ".join(repr(n) for n in ("path", *names))
        raise LangcolorError(f"{path}:1: CSV manifest needs a header with a 'path' column (columns: {want}), got {columns}")
    unknown = [c for c in columns if c != "path" and c not in names]
    if unknown:
        raise LangcolorError(f"{path}:1: unknown column(s) {unknown}; this model takes {list(names) or 'no input'}")
    reader.fieldnames = columns
    entries = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        p = (row.get("path") or "").strip()
        if not p:
            raise LangcolorError(f"{where}: empty path")
        entries.append(ManifestEntry(reader.line_num, p, _values(row, names, where)))
    return entries


def _read_jsonl(path: Path, text: str, names: tuple[str, ...]) -> list[ManifestEntry]:
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
        unknown = sorted(k for k in obj if k != "path" and k not in names)
        if unknown:
            raise LangcolorError(f"{where}: unknown key(s) {unknown}; this model takes {list(names) or 'no input'}")
        entries.append(ManifestEntry(number, obj["path"].strip(), _values(obj, names, where)))
    return entries


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _refuse(what: str, offenders: list[str]) -> LangcolorError:
    shown = "; ".join(offenders[:_MAX_SHOWN])
    more = f" (and {len(offenders) - _MAX_SHOWN} more)" if len(offenders) > _MAX_SHOWN else ""
    return LangcolorError(f"{what}: {shown}{more}")


def _resolve_entry(root: Path, value: str, line: int, manifest: Path) -> tuple[str, Path] | str:
    """(relative POSIX path, absolute path) of a path in a manifest, or why it leaves the tree."""
    where = f"{manifest}:{line}: {value!r}"
    raw = Path(value)
    if "\x00" in value:
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
    output: Path | None,
    manifest: Path | None = None,
    defaults: dict[str, str] | None = None,
    fmt: str = "png",
    fields: tuple[InputField, ...] = (),
) -> BatchPlan:
    """Everything the job will do, with every path checked; raises ``LangcolorError`` to refuse.

    ``fields`` are the model's inputs; ``defaults`` their values for the whole run (an image input as
    a path, trusted: it comes from the command line, not from a manifest line)."""
    if fmt != "same" and fmt not in OUTPUT_FORMATS:
        raise LangcolorError(f"unknown output format {fmt!r}; choose png, jpeg or same")
    source = Path(source).absolute()
    if not source.exists():
        raise LangcolorError(f"source {source} does not exist")
    if source.is_dir():
        root, manifest = source.resolve(), (Path(manifest).absolute() if manifest else None)
    else:
        if manifest:
            raise LangcolorError("--manifest goes with a source folder; a manifest source already holds the inputs")
        root, manifest = source.parent.resolve(), source
    if output is not None:  # None: the output is not a local folder (an S3 prefix), so it cannot overlap
        out = Path(output).absolute().resolve()
        if _inside(out, root) or _inside(root, out):
            raise LangcolorError(f"output folder {out} and source tree {root} overlap; choose an output folder outside it")
    kinds = {f.name: f.kind for f in fields}
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None and v.strip()}
    for key, value in defaults.items():
        if kinds.get(key) == IMAGE:
            defaults[key] = str(Path(value).absolute())

    entries = read_manifest(manifest, fields) if manifest else []
    refused: list[str] = []
    listed: dict[str, tuple[Path, dict[str, str]]] = {}
    for entry in entries:
        resolved = _resolve_entry(root, entry.path, entry.line, manifest)  # type: ignore[arg-type]
        if isinstance(resolved, str):
            refused.append(resolved)
            continue
        rel, path = resolved
        if rel in listed:
            refused.append(f"{manifest}:{entry.line}: {rel!r} listed twice")
        values = dict(entry.values)
        for key, value in entry.values.items():
            if kinds.get(key) == IMAGE:  # a reference image listed in the manifest: inside the tree too
                image = _resolve_entry(root, value, entry.line, manifest)  # type: ignore[arg-type]
                if isinstance(image, str):
                    refused.append(f"{key}: {image}")
                    continue
                values[key] = str(image[1])
        listed[rel] = (path, values)
    if refused:
        raise _refuse("manifest refused", refused)

    candidates: dict[str, tuple[Path, dict[str, str]]] = {}
    if source.is_dir():
        candidates.update({rel: (path, {}) for rel, path in _walk(root)})
    candidates.update(listed)  # a manifest line wins over "walked, no inputs"

    required = [f.name for f in fields if f.required]
    items, missing, by_output = [], [], {}
    for rel, (path, values) in sorted(candidates.items()):
        if not path.is_file():
            missing.append((rel, "listed in the manifest but not found" if path.exists() is False else "not a regular file"))
            continue
        out_rel, out_format = output_name(rel, fmt)
        key = out_rel.casefold()  # a.png and A.PNG collide on case-insensitive disks
        if key in by_output:
            refused.append(f"{by_output[key]!r} and {rel!r} would both write {out_rel!r}")
            continue
        by_output[key] = rel
        inputs = {**defaults, **values}
        lacking = next((n for n in required if n not in inputs), "")
        items.append(BatchItem(rel, path, None if lacking else inputs, out_rel, out_format, lacking))
    if refused:
        raise _refuse("output path collision (use --format same, or rename)", refused)
    return BatchPlan(root, tuple(items), tuple(missing))
