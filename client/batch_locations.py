"""Where a distributed batch reads and writes: a local folder or an ``s3://bucket/prefix``.

Sources. A local source is planned by ``batch_sources.plan_batch``, every check unchanged. An S3
source is a prefix (walked recursively, hidden segments skipped) or a CSV/JSONL manifest object,
held to the same rules: a manifest entry with an absolute path, a scheme, an empty, ``.`` or ``..``
segment, or a ``.langcolor`` first segment is refused, and so is a listed key that would leave the
prefix; output prefixes that overlap the source and two inputs writing one output are refused
before any image is read.

Destinations. A local folder keeps ``batch_state`` as it is (fsynced records, atomic rename, a
``flock``). An S3 prefix gets the same files as objects: each output is one PUT (whole or absent),
and the records are a write-ahead log in ``DST/.langcolor/``: ``records.jsonl`` plus segment objects
``records-<run>-<seq>.jsonl``, each holding the records of up to ``SEGMENT_RECORDS`` outputs or
``SEGMENT_S`` seconds, folded into ``records.jsonl`` when the next run starts. A driver killed
between segments loses at most one segment's records; a rerun redoes those images and replaces
their objects whole. S3 has no lock: one run at a time per output prefix is the user's to keep.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from .batch_sources import (IMAGE_EXTENSIONS, MANIFEST_EXTENSIONS, STATE_DIR, BatchItem, parse_manifest, plan_batch,
                            output_name)
from .batch_state import RECORDS_FILE, REPORT_FILE, FailureReport, JobKey, RecordLog, remove_stale_temporaries
from .errors import LangcolorError
from .families import IMAGE, InputField
from .outputs import write_atomic
from .storage import S3Path, S3Store, check_relative_key, is_s3

log = logging.getLogger(__name__)

SEGMENT_RECORDS = 64  # records per segment object: at most this many images redone after a killed driver
SEGMENT_S = 10.0  # ...or this many seconds of work, whichever comes first
_MAX_SHOWN = 5


@dataclass(frozen=True)
class ObjectItem:
    """``batch_sources.BatchItem`` for an input that is an object: ``uri`` instead of ``path``."""

    rel: str
    uri: S3Path
    inputs: dict[str, str] | None  # text as it is, an image input as an s3:// URI
    out_rel: str
    out_format: str
    missing_input: str = ""


Item = BatchItem | ObjectItem


@dataclass(frozen=True)
class Plan:
    items: tuple[Item, ...]
    missing: tuple[tuple[str, str], ...]


def read_location(store: S3Store | None, location: str | Path | S3Path) -> bytes:
    """The bytes of a local file or an object (an input photo, a reference image)."""
    if isinstance(location, S3Path) or is_s3(location):
        assert store is not None, "an s3:// location without a store"
        return store.read(location if isinstance(location, S3Path) else S3Path.parse(location))
    try:
        return Path(location).read_bytes()
    except OSError as e:
        raise LangcolorError(f"cannot read ({e.strerror or e})") from e


def item_bytes(store: S3Store | None, item: Item) -> bytes:
    return read_location(store, item.uri if isinstance(item, ObjectItem) else item.path)


# --------------------------------------------------------------------------- planning


def plan(source: str | Path, output: str | Path, manifest: str | Path | None, defaults: dict[str, str],
         fmt: str, fields: tuple[InputField, ...], store: S3Store | None) -> Plan:
    """Every item of the job with every path checked; ``LangcolorError`` refuses the job."""
    out_s3 = S3Path.parse(output) if is_s3(output) else None
    if not is_s3(source):
        if manifest is not None and is_s3(manifest):
            raise LangcolorError("an s3:// manifest goes with an s3:// source")
        local = plan_batch(Path(source), None if out_s3 else Path(output), Path(manifest) if manifest else None,
                           defaults, fmt, fields)
        return Plan(local.items, local.missing)
    assert store is not None
    src = S3Path.parse(source)
    if PurePosixPath(src.key).suffix.lower() in MANIFEST_EXTENSIONS:
        if manifest is not None:
            raise LangcolorError("--manifest goes with a source prefix; a manifest source already holds the inputs")
        root, manifest_uri = src.parent, src
    else:
        root, manifest_uri = src, (S3Path.parse(manifest) if manifest is not None and is_s3(manifest) else None)
    if out_s3 is not None and (root.contains(out_s3) or out_s3.contains(root)):
        raise LangcolorError(f"output {out_s3} and source prefix {root} overlap; choose an output prefix outside it")
    if not store.bucket_exists(root):
        raise LangcolorError(f"source bucket {root.bucket} does not exist (or is not reachable)")
    listing = store.list(root)
    entries, where = [], ""
    if manifest_uri is not None:
        entries, where = parse_manifest(str(manifest_uri), store.read(manifest_uri), fields), str(manifest_uri)
    elif manifest is not None:  # a local manifest for an S3 prefix
        from .batch_sources import read_manifest

        entries, where = read_manifest(Path(manifest), fields), str(manifest)
    return _plan_objects(root, listing, entries, where, manifest_uri is None, defaults, fmt, fields)


def _entry_key(value: str, line: int, where: str) -> str:
    """A manifest path as a key relative to the source prefix, or ``LangcolorError`` saying why not."""
    at = f"{where}:{line}: {value!r}"
    if "://" in value:
        raise LangcolorError(f"{at} names a location of its own; give paths relative to the source prefix")
    check_relative_key(value, at)
    if value.split("/")[0] == STATE_DIR:
        raise LangcolorError(f"{at} is inside a {STATE_DIR} folder, reserved for batch records")
    return value


def _plan_objects(root: S3Path, listing: dict[str, int], entries: list, where: str, walk: bool,
                  defaults: dict[str, str], fmt: str, fields: tuple[InputField, ...]) -> Plan:
    kinds = {f.name: f.kind for f in fields}
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None and v.strip()}
    refused: list[str] = []
    listed: dict[str, dict[str, str]] = {}
    for entry in entries:
        try:
            rel = _entry_key(entry.path, entry.line, where)
        except LangcolorError as e:
            refused.append(str(e))
            continue
        if rel in listed:
            refused.append(f"{where}:{entry.line}: {rel!r} listed twice")
        values = dict(entry.values)
        for key, value in entry.values.items():
            if kinds.get(key) == IMAGE:  # a reference image in the manifest: under the prefix too
                try:
                    values[key] = str(root.child(_entry_key(value, entry.line, where)))
                except LangcolorError as e:
                    refused.append(f"{key}: {e}")
        listed[rel] = values
    if refused:
        raise _refuse("manifest refused", refused)

    candidates: dict[str, dict[str, str]] = {}
    if walk:
        for rel in sorted(listing):
            parts = rel.split("/")
            if any(p.startswith(".") for p in parts) or PurePosixPath(rel).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                check_relative_key(rel, f"{root}/{rel}")
            except LangcolorError as e:  # a key such as a/../b names another path: never written under DST
                log.warning("%s, ignored", e)
                continue
            candidates[rel] = {}
    candidates.update(listed)

    required = [f.name for f in fields if f.required]
    items, missing, by_output = [], [], {}
    for rel, values in sorted(candidates.items()):
        if rel not in listing:
            missing.append((rel, "listed in the manifest but not found"))
            continue
        out_rel, out_format = output_name(rel, fmt)
        folded = out_rel.casefold()
        if folded in by_output:
            refused.append(f"{by_output[folded]!r} and {rel!r} would both write {out_rel!r}")
            continue
        by_output[folded] = rel
        inputs = {**defaults, **values}
        lacking = next((n for n in required if n not in inputs), "")
        items.append(ObjectItem(rel, root.child(rel), None if lacking else inputs, out_rel, out_format, lacking))
    if refused:
        raise _refuse("output path collision (use --format same, or rename)", refused)
    return Plan(tuple(items), tuple(missing))


def _refuse(what: str, offenders: list[str]) -> LangcolorError:
    shown = "; ".join(offenders[:_MAX_SHOWN])
    more = f" (and {len(offenders) - _MAX_SHOWN} more)" if len(offenders) > _MAX_SHOWN else ""
    return LangcolorError(f"{what}: {shown}{more}")


# --------------------------------------------------------------------------- destinations


class LocalDestination:
    """A local output folder, exactly as ``langcolor batch`` keeps it (``batch_state``)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir).absolute()
        self.records: RecordLog | None = None
        self.report: FailureReport | None = None

    def __str__(self) -> str:
        return str(self.out_dir)

    def open(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LangcolorError(f"cannot create output folder {self.out_dir}: {e.strerror or e}") from e
        self.records = RecordLog(self.out_dir)
        self.records.open()  # the folder's lock: one run at a time
        self.report = FailureReport(self.out_dir).__enter__()
        remove_stale_temporaries(self.out_dir)

    def write(self, out_rel: str, data: bytes) -> None:
        write_atomic(self.out_dir / out_rel, data, make_parents=True)

    def close(self) -> None:
        if self.report is not None:
            self.report.__exit__(None, None, None)
        if self.records is not None:
            self.records.close()


class ObjectRecordLog(RecordLog):
    """``RecordLog`` whose file is mirrored from and to ``DST/.langcolor/`` objects (module docstring).

    The local file lives in a scratch folder; ``is_done`` compares the record's size with the
    object's, from one listing taken at the start."""

    def __init__(self, store: S3Store, out: S3Path, scratch: Path):
        super().__init__(scratch)
        self.store, self.out = store, out
        self.state = out.child(STATE_DIR)
        self._sizes: dict[str, int] = {}
        self._segment: list[str] = []
        self._segment_started = time.monotonic()
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        self._seq = 0
        self._flush_lock = threading.Lock()

    def open(self) -> None:
        listing = self.store.list(self.out)
        state_prefix = STATE_DIR + "/"
        self._sizes = {rel: size for rel, size in listing.items() if not rel.startswith(state_prefix)}
        segments = sorted(rel for rel in listing if rel.startswith(state_prefix + "records-"))
        parts = []
        if state_prefix + RECORDS_FILE in listing:
            parts.append(self.store.read(self.out.child(state_prefix + RECORDS_FILE)))
        parts += [self.store.read(self.out.child(rel)) for rel in segments]  # oldest first: the last record wins
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # A segment cut short cannot exist (objects are whole), but keep every part on its own lines.
        self.path.write_bytes(b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts))
        super().open()  # loads and compacts the local copy
        self.store.write(self.state.child(RECORDS_FILE), self.path.read_bytes())
        for rel in segments:  # folded into records.jsonl: a kill between these deletes only repeats lines
            self.store.delete(self.out.child(rel))

    def is_done(self, out_rel: str, input_sha256: str, key: JobKey) -> bool:
        record = self._records.get(out_rel)
        if record is None or record.input_sha256 != input_sha256 or record.key() != key:
            return False
        return self._sizes.get(out_rel) == record.output_size

    def add(self, out_rel: str, in_rel: str, input_sha256: str, key: JobKey, output_size: int,
            notes: tuple = ()) -> None:
        super().add(out_rel, in_rel, input_sha256, key, output_size, notes)
        line = json.dumps(asdict(self._records[out_rel]), sort_keys=True) + "\n"
        with self._flush_lock:
            self._sizes[out_rel] = output_size
            self._segment.append(line)
            due = len(self._segment) >= SEGMENT_RECORDS or time.monotonic() - self._segment_started >= SEGMENT_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Put the records since the last flush as one new segment object."""
        with self._flush_lock:
            lines, self._segment = self._segment, []
            self._segment_started = time.monotonic()
            if not lines:
                return
            name = f"records-{self._run}-{self._seq:06d}.jsonl"
            self._seq += 1
            self.store.write(self.state.child(name), "".join(lines).encode("utf-8"))

    def close(self) -> None:
        try:
            if self._log is not None:
                self.flush()
        finally:
            super().close()


class ObjectDestination:
    """An ``s3://`` output prefix: outputs are objects, the records and report mirrored as objects."""

    def __init__(self, store: S3Store, out: S3Path):
        self.store, self.out = store, out
        self.scratch = Path(tempfile.mkdtemp(prefix="langcolor-s3-state-"))
        self.records: ObjectRecordLog | None = None
        self.report: FailureReport | None = None

    def __str__(self) -> str:
        return str(self.out)

    def open(self) -> None:
        if not self.store.bucket_exists(self.out):
            raise LangcolorError(f"output bucket {self.out.bucket} does not exist (or is not reachable)")
        self.records = ObjectRecordLog(self.store, self.out, self.scratch)
        self.records.open()
        self.report = FailureReport(self.scratch).__enter__()

    def write(self, out_rel: str, data: bytes) -> None:
        self.store.write(self.out.child(out_rel), data)

    def close(self) -> None:
        try:
            if self.report is not None:
                self.report.__exit__(None, None, None)
                self.store.write(self.out.child(REPORT_FILE), (self.scratch / REPORT_FILE).read_bytes())
            if self.records is not None:
                self.records.close()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def report_location(self) -> str:
        return str(self.out.child(REPORT_FILE))


def destination(output: str | Path, store: S3Store | None) -> LocalDestination | ObjectDestination:
    if is_s3(output):
        assert store is not None
        return ObjectDestination(store, S3Path.parse(output))
    return LocalDestination(Path(output))
