"""Bulk import of events from CSV or JSON Lines (``.gz`` too), with a report like the catalog's.

Columns: ``event_id?, user_id, type?, item_id?, value?, query?, timestamp?, seq_pos?``; others are
ignored and listed in the report. Defaults for what a file does not give:

- no ``event_id``: ``"imp-" + sha256(file name, line number, row)[:32]``, stable, so importing the same
  file again stores nothing new, while another file that happens to share the name does not collide;
- no ``type``: ``purchase`` (review datasets such as Amazon's list bought items), noted in the report;
- no ``timestamp`` but a ``seq_pos`` (0 = a user's oldest event): ``SYNTHETIC_BASE + seq_pos`` seconds,
  so each user's events keep the ``seq_pos`` order (``user_events`` sorts by time) wherever the rows
  are in the file. These times are made up: per-day counts show them all on 2018-01-01, and the
  decayed popularity of such old events is tiny (its ranking is still right). ``synthetic_base`` moves them.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.catalog import Rejected
from engine.csv_rows import csv_rows
from engine.errors import CatalogError
from engine.events.model import Event, InvalidEvent, validate_event
from engine.events.store import EventStore

COLUMNS = ("event_id", "user_id", "type", "item_id", "value", "query", "timestamp", "request_id", "position",
           "seq_pos")
DEFAULT_TYPE = "purchase"
SYNTHETIC_BASE = 1514764800.0  # 2018-01-01T00:00:00Z
_FORMATS = {".csv": "csv", ".csv.gz": "csv", ".jsonl": "jsonl", ".jsonl.gz": "jsonl",
            ".ndjson": "jsonl", ".ndjson.gz": "jsonl"}


@dataclass
class ImportReport:
    """What :func:`import_events` did: ``rows_read == accepted + duplicates + len(rejected)``."""

    path: str
    format: str
    rows_read: int = 0
    accepted: int = 0  # newly stored
    duplicates: int = 0  # already stored (a re-import) or repeated in the file
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> bool:
        return not self.rejected

    def summary_lines(self, limit: int = 20) -> list[str]:
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.path} ({self.format}): {self.rows_read} rows read, {self.accepted} events stored, "
               f"{self.duplicates} already stored, {len(self.rejected)} rejected "
               f"({self.seconds:.1f} s, {rate:,.0f} rows/s)"]
        out += [f"note: {n}" for n in self.notes]
        if self.ignored_columns:
            out.append("ignored columns: " + ", ".join(self.ignored_columns))
        if self.rejected:
            out.append("rejected:")
            out += [f"  line {r.line}: {r.reason}" for r in self.rejected[:limit]]
            if len(self.rejected) > limit:
                out.append(f"  ... and {len(self.rejected) - limit} more")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def events_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise CatalogError(f"{path}: unknown events format; use .csv, .csv.gz, .jsonl, .jsonl.gz or .ndjson")


def import_events(store: EventStore, path: str | Path, *, batch_size: int = 1000,
                  progress: Callable[[ImportReport], None] | None = None,
                  known_item: Callable[[str], bool] | None = None, now: float | None = None,
                  synthetic_base: float = SYNTHETIC_BASE) -> ImportReport:
    """Validate every row and store the valid ones in batches of ``batch_size`` (one transaction each).

    Raises :class:`CatalogError` when the file cannot be read at all (missing, unknown format, no
    ``user_id`` column); a bad row is rejected with its line number and the import goes on.
    ``synthetic_base`` is the made-up time of ``seq_pos`` 0 (see the module docstring).
    """
    path = Path(path)
    fmt = events_format(path)
    if not path.is_file():
        raise CatalogError(f"events file {path} does not exist or is not a file")
    report = ImportReport(path=str(path), format=fmt)
    now = time.time() if now is None else now
    started = time.perf_counter()
    batch: list[Event] = []
    defaulted_type = 0
    synthetic_ts = 0

    def flush() -> None:
        result = store.add_many(batch)
        report.accepted += len(result.accepted)
        report.duplicates += len(result.duplicates)
        batch.clear()
        report.seconds = time.perf_counter() - started
        if progress is not None:
            progress(report)

    rows = _csv_rows(path, report) if fmt == "csv" else _jsonl_rows(path, report)
    try:
        for line, row in rows:
            report.rows_read += 1
            try:
                obj, typed, synthetic = _to_event_object(path.name, line, row, synthetic_base)
                event = validate_event(obj, known_item=known_item, now=now)
            except InvalidEvent as e:
                report.rejected.append(Rejected(line, str(e)))
                continue
            defaulted_type += not typed
            synthetic_ts += synthetic
            batch.append(event)
            if len(batch) >= batch_size:
                flush()
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError, zlib.error) as e:
        raise CatalogError(f"{path}: cannot read: {e}") from e
    if batch:
        flush()
    if defaulted_type:
        report.notes.append(f"{defaulted_type} rows had no type and were imported as '{DEFAULT_TYPE}'")
    if synthetic_ts:
        base = dt.datetime.fromtimestamp(synthetic_base, dt.timezone.utc).isoformat()
        report.notes.append(f"{synthetic_ts} rows had no timestamp: synthetic time {base} + seq_pos "
                            "seconds, which keeps each user's seq_pos order")
    report.seconds = time.perf_counter() - started
    return report


def _to_event_object(name: str, line: int, row: Mapping[str, Any],
                     base: float) -> tuple[dict[str, Any], bool, bool]:
    """(event object for :func:`validate_event`, whether it had a type, whether its time is synthetic)."""
    obj = {k: v for k, v in row.items() if k in COLUMNS and k != "seq_pos" and v is not None and v != ""}
    if "event_id" not in obj:
        canon = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(f"{name}\n{line}\n{canon}".encode()).hexdigest()
        obj["event_id"] = f"imp-{digest[:32]}"
    typed = "type" in obj
    obj.setdefault("type", DEFAULT_TYPE)
    synthetic = False
    seq_pos = row.get("seq_pos")
    if "timestamp" not in obj and seq_pos not in (None, ""):
        text = str(seq_pos).strip()
        if isinstance(seq_pos, (bool, float)) or not (text.isascii() and text.isdigit()):
            raise InvalidEvent("seq_pos", f"must be an integer >= 0, got {seq_pos!r}")
        pos = int(text)
        obj["timestamp"] = base + pos
        synthetic = True
    return obj, typed, synthetic


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # validate_event explains what is wrong with it


def _csv_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = csv_rows(path)
    header = [h.strip().lower() for h in next(rows, (0, []))[1]]
    if "user_id" not in header:
        raise CatalogError(f"{path}: no user_id column; found: {', '.join(header) or 'nothing'}")
    report.ignored_columns = [h for h in header if h not in COLUMNS]
    width = len(header)
    for line, cells in rows:
        if len(cells) != width:
            report.rows_read += 1
            report.rejected.append(Rejected(line, f"{len(cells)} fields but the header has {width}"))
            continue
        row: dict[str, Any] = {k: v.strip() for k, v in zip(header, cells)}
        for key in ("value", "timestamp"):
            if row.get(key):
                row[key] = _number_or_text(row[key])
        if row.get("position", "").isdigit():  # CSV has no integers: "3" is the position 3
            row["position"] = int(row["position"])
        yield line, row


def _jsonl_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    ignored: set[str] = set()
    with opener(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too deep, a number too long
                report.rows_read += 1
                report.rejected.append(Rejected(line, f"invalid JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                report.rows_read += 1
                report.rejected.append(Rejected(line, f"not a JSON object but {type(obj).__name__}"))
                continue
            new = set(obj) - ignored - set(COLUMNS)
            if new:
                ignored |= new
                report.ignored_columns = sorted(ignored)
            yield line, obj
