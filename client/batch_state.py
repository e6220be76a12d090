"""What survives a killed batch run: atomic outputs, per-output records, the failure report.

- An output is written to a hidden temporary file in its own folder, fsynced, then ``os.replace``d
  into place, so a reader never sees half an image. A run killed mid-write leaves only the
  temporary file, which the next run removes (under the folder's lock, so never another run's).
- After each rename one line is appended (and fsynced) to ``DIR/.langcolor/records.jsonl``. It ties
  the output to the input's content hash, the model (family and weights hash) and the condition (the
  caption's text, a reference image's content hash, ...); a rerun skips an image only when all of
  these match and the output file still has the recorded size. The notes on how the inputs were read
  (ignored words, a caption without effect) are kept beside them.
  A line cut short by SIGKILL is ignored; at the start of a run the log is compacted (atomically).
- ``DIR/failures.jsonl`` gets one line per failure of this run (input path and reason), written as
  failures happen so a killed run still tells what failed so far.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .batch_sources import STATE_DIR
from .errors import LangcolorError
from .outputs import TMP_MARK, write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
LOCK_FILE = "lock"
REPORT_FILE = "failures.jsonl"


def condition_key(values: dict[str, str]) -> str:
    """The canonical text of what the model is told (an image input by its content hash): records key on it."""
    return json.dumps(dict(sorted(values.items())), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class JobKey:
    """What, besides the input's bytes, decides an output's pixels."""

    model: str  # family
    weights_sha256: str
    condition: str  # condition_key of the inputs
    out_format: str


@dataclass(frozen=True)
class OutputRecord:
    output: str  # relative to the output folder
    input: str  # relative to the source root
    input_sha256: str
    model: str
    weights_sha256: str
    condition: str
    out_format: str
    output_size: int  # bytes; a truncated or replaced output no longer counts as done
    written_at: float
    notes: tuple = ()  # how the inputs were read (Note.to_dict() each); not part of the key

    def key(self) -> JobKey:
        return JobKey(self.model, self.weights_sha256, self.condition, self.out_format)

    @classmethod
    def from_json(cls, raw: dict) -> "OutputRecord":
        raw = dict(raw)
        if "condition" not in raw and "caption" in raw:  # a record written when captions were the only input
            raw["condition"] = condition_key({"caption": raw.pop("caption")})
        raw["notes"] = tuple(raw.get("notes", ()))
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary outputs left by a killed run; call only while holding the folder's lock."""
    removed = 0
    for dirpath, _, filenames in os.walk(out_dir):
        for name in filenames:
            if name.startswith(".") and TMP_MARK in name:
                (Path(dirpath) / name).unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


class RecordLog:
    """The output folder's record of finished images; one writer at a time (a file lock)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.state_dir = self.out_dir / STATE_DIR
        self.path = self.state_dir / RECORDS_FILE
        self._records: dict[str, OutputRecord] = {}
        self._mutex = threading.Lock()
        self._lock_file = None
        self._log = None

    def __enter__(self) -> "RecordLog":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.state_dir / LOCK_FILE, "a")
        except OSError as e:
            raise LangcolorError(f"cannot write to output folder {self.out_dir}: {e.strerror or e}") from e
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                self._lock_file.close()
                raise LangcolorError(f"another batch run is writing to {self.out_dir}") from e
        self._records = self._load()
        self._compact()
        self._log = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def _load(self) -> dict[str, OutputRecord]:
        records: dict[str, OutputRecord] = {}
        if not self.path.exists():
            return records
        bad = 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = OutputRecord.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                bad += 1  # a line cut short by a kill; the image is simply redone
                continue
            records[record.output] = record  # the last record of an output wins
        if bad:
            log.warning("%s: ignored %d unreadable record line(s)", self.path, bad)
        return records

    def _compact(self) -> None:
        text = "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in self._records.values())
        write_atomic(self.path, text.encode("utf-8"))

    def is_done(self, out_rel: str, input_sha256: str, key: JobKey) -> bool:
        record = self._records.get(out_rel)
        if record is None or record.input_sha256 != input_sha256 or record.key() != key:
            return False
        try:
            return (self.out_dir / out_rel).stat().st_size == record.output_size
        except OSError:
            return False

    def add(self, out_rel: str, in_rel: str, input_sha256: str, key: JobKey, output_size: int,
            notes: tuple = ()) -> None:
        assert self._log is not None, "RecordLog used outside its with-block"
        record = OutputRecord(
            out_rel, in_rel, input_sha256, key.model, key.weights_sha256, key.condition, key.out_format,
            output_size, time.time(), tuple(notes),
        )
        line = json.dumps(asdict(record), sort_keys=True) + "\n"
        with self._mutex:
            self._log.write(line)
            self._log.flush()
            os.fsync(self._log.fileno())
            self._records[out_rel] = record

    def __len__(self) -> int:
        return len(self._records)


@dataclass(frozen=True)
class Failure:
    input: str  # relative to the source root
    reason: str


class FailureReport:
    """``DIR/failures.jsonl``: rewritten by each run, one line per failure as it happens."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / REPORT_FILE
        self._mutex = threading.Lock()
        self._file = None
        self.failures: list[Failure] = []

    def __enter__(self) -> "FailureReport":
        self._file = open(self.path, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, input_rel: str, reason: str) -> None:
        failure = Failure(input_rel, reason)
        with self._mutex:
            self.failures.append(failure)
            if self._file is not None:
                self._file.write(json.dumps(asdict(failure)) + "\n")
                self._file.flush()
