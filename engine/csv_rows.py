"""Reading a CSV file (``.gz`` too) row by row with line numbers: shared by the catalog and event importers.

UTF-8 (a BOM is dropped); the delimiter is the most frequent of ``,;\\t|`` on the first line (comma on a
tie); quoted fields may span lines, and a row's number is the line it starts on.
"""
from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from engine.errors import CatalogError


def open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)``: the header row first (as it is, even blank), then every row that is not blank.
    Raises ``CatalogError`` naming the line on malformed CSV."""
    with open_text(path) as fh:
        first = fh.readline()
        delimiter = max(",;\t|", key=lambda d: (first.count(d), d == ","))
        fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        header = True
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise CatalogError(f"{path}: line {line}: malformed CSV: {e}") from e
            if header or any(c.strip() for c in cells):
                yield line, cells
            header = False
