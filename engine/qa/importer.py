"""Read past questions and answers from a file: the Amazon QA format (``asin, question, answer,
answerTime/unixTime, questionType, answerType``; CSV, or one Python-dict literal per line as McAuley
publishes it, read with :func:`ast.literal_eval`, never ``eval``) or a plain CSV / JSON Lines file with
``item_id, question, answer`` and an optional ``date`` (ISO 8601 or Unix seconds). Gzip by suffix.

Every row is accounted for: read = stored + already stored + skipped, each skip with its reason and
its first line numbers.
"""
from __future__ import annotations

import ast
import csv
import datetime as dt
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engine.errors import InvalidQuery
from engine.qa.store import Pair
from engine.text import clean_text

MAX_TEXT = 5000
EXAMPLES = 10
SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz")


@dataclass
class ImportReport:
    file: str
    read: int = 0
    stored: int = 0
    already_stored: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers
    seconds: float = 0.0

    def skip(self, reason: str, line: int) -> None:
        self.skipped.setdefault(reason, []).append(line)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "read": self.read, "stored": self.stored, "already_stored": self.already_stored,
                "skipped": self.skipped_count,
                "skipped_by_reason": {r: {"count": len(lines), "lines": lines[:EXAMPLES]}
                                      for r, lines in sorted(self.skipped.items())},
                "seconds": round(self.seconds, 2)}

    def lines(self) -> list[str]:
        out = [f"{self.file}: {self.read} rows read, {self.stored} stored, {self.already_stored} already stored, "
               f"{self.skipped_count} skipped"]
        for reason, lines in sorted(self.skipped.items()):
            more = "" if len(lines) <= EXAMPLES else f" (and {len(lines) - EXAMPLES} more)"
            out.append(f"  skipped, {reason}: {len(lines)} (lines {', '.join(map(str, lines[:EXAMPLES]))}{more})")
        return out


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, the row's fields) per row; None for a line that cannot be read."""
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise InvalidQuery("file", f"{path.name}: expected one of {', '.join(SUFFIXES)}")
    with _open(path) as f:
        if name.endswith((".csv", ".csv.gz")):
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, dict(row)
            return
        for n, line in enumerate(f, 1):
            text = str(line).strip()
            if not text:
                continue
            try:
                value: Any = json.loads(text)
            except ValueError:
                try:
                    value = ast.literal_eval(text)  # McAuley's files: Python dict literals
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    value = None
            yield n, value if isinstance(value, dict) else None


def _date(row: dict[str, Any]) -> float | None:
    for key in ("unixTime", "date", "answered_at"):
        v = row.get(key)
        if v in (None, ""):
            continue
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
        try:
            d = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            return (d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)).timestamp()
        except ValueError:
            pass
    v = row.get("answerTime")
    if v:
        try:
            return dt.datetime.strptime(str(v).strip(), "%b %d, %Y").replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            pass
    return None


def _text(value: Any) -> str:
    return clean_text(str(value))[0][:MAX_TEXT] if value is not None else ""


def parse_row(row: dict[str, Any] | None) -> Pair | str:
    """The pair in one row, or the reason it is skipped."""
    if row is None:
        return "unreadable line (not a CSV row, JSON object or Python dict literal)"
    item = _text(row.get("item_id", row.get("asin")))
    if not item:
        return "missing item id (item_id or asin)"
    question, answer = _text(row.get("question")), _text(row.get("answer"))
    if not question:
        return "empty question"
    if not answer:
        return "empty answer"
    return Pair(item, question, answer, _date(row))
