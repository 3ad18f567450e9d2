"""Products and catalog ingestion from CSV, JSON Lines and Parquet, with a report of what was changed.

``read_catalog`` cleans every row (see :mod:`engine.text`), rejects rows it cannot use and says why,
with the line number, and never drops anything silently. ``write_catalog_jsonl`` and
``load_catalog_jsonl`` save and reload a cleaned catalog as it is (trusted, no cleaning).
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.csv_rows import csv_rows
from engine.errors import CatalogError, NotFound
from engine import text as _text

FIELDS = ("id", "title", "description", "category", "brand", "price", "in_stock", "url", "image_url", "created_at",
          "attributes")
REQUIRED = ("id", "title")
CATEGORY_SEP = " > "


def category_segments(path: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"A > B"`` (or a list of segments) -> ``("A", "B")``: segments stripped, empty ones dropped."""
    if not path:
        return ()
    parts = path.split(">") if isinstance(path, str) else path
    return tuple(s.strip() for s in parts if s.strip())


def category_key(path: str | Sequence[str]) -> str:
    """Normalised category path for prefix matching: segments stripped, lower-cased, joined by ' > '."""
    return CATEGORY_SEP.join(s.lower() for s in category_segments(path))

_FORMATS = {
    ".csv": "csv", ".csv.gz": "csv",
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".ndjson": "jsonl", ".ndjson.gz": "jsonl",
    ".json": "jsonl", ".json.gz": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}
_CURRENCY = re.compile(r"^(?:[A-Z]{3}|[$€£¥₹])?\s*(.*?)\s*(?:[A-Z]{3}|[$€£¥₹])?$")


@dataclass(frozen=True, slots=True)
class Product:
    """One sellable item. ``category`` holds the path segments, root first; ``in_stock`` None is unknown."""

    id: str
    title: str
    description: str = ""
    category: tuple[str, ...] = ()
    brand: str = ""
    price: float | None = None
    in_stock: bool | None = None
    url: str = ""
    image_url: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    created_at: str | None = None  # when the shop listed it: ISO 8601 UTC, "2024-05-01T09:30:00Z" (parse_datetime)

    @property
    def category_path(self) -> str:
        return CATEGORY_SEP.join(self.category)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field; ``category`` as the ``"A > B"`` string."""
        return {
            "id": self.id, "title": self.title, "description": self.description,
            "category": self.category_path, "brand": self.brand, "price": self.price,
            "in_stock": self.in_stock, "url": self.url, "image_url": self.image_url,
            "created_at": self.created_at, "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Product:
        """Inverse of :meth:`to_dict`, without cleaning: for catalogs this module wrote."""
        segments = category_segments(d.get("category"))
        price = d.get("price")
        return cls(
            id=str(d["id"]), title=str(d["title"]), description=d.get("description") or "",
            category=segments, brand=d.get("brand") or "",
            price=None if price is None else float(price), in_stock=d.get("in_stock"),
            url=d.get("url") or "", image_url=d.get("image_url") or "",
            attributes=dict(d.get("attributes") or {}), created_at=d.get("created_at") or None,
        )


@dataclass
class Rejected:
    """A problem at ``line`` (1-based line in the file; for Parquet the 1-based row)."""

    line: int
    reason: str


@dataclass
class Duplicate:
    """An id found on several lines; the last one's data was kept."""

    id: str
    lines: list[int]


@dataclass
class CatalogReport:
    """What :func:`read_catalog` did.

    ``rows_read`` counts data rows (blank lines are not rows); ``accepted`` counts distinct products,
    so ``rows_read == accepted + len(rejected) + sum(len(d.lines) - 1 for d in duplicates)``.
    ``cleaned`` counts field values changed per cleaning kind; ``warnings`` are field problems on
    kept rows (the field was left empty); ``unknown_columns`` went into ``attributes``.
    """

    path: str
    format: str
    rows_read: int = 0
    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    cleaned: dict[str, int] = field(default_factory=dict)
    warnings: list[Rejected] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        """True when no row was rejected."""
        return not self.rejected

    def summary_lines(self, limit: int = 20) -> list[str]:
        """Human-readable report: counts, then up to ``limit`` entries per section with line numbers."""
        unit = "row" if self.format == "parquet" else "line"
        out = [(
            f"{self.path} ({self.format}): {self.rows_read} rows read, {self.accepted} products accepted, "
            f"{len(self.rejected)} rejected, {len(self.duplicates)} duplicate ids, {len(self.warnings)} warnings"
        )]
        if self.cleaned:
            out.append("cleaned: " + ", ".join(f"{k} {v}" for k, v in sorted(self.cleaned.items())))
        if self.unknown_columns:
            out.append("unknown columns (kept in attributes): " + ", ".join(self.unknown_columns))

        def section(title: str, items: list[str]) -> None:
            if items:
                out.append(f"{title}:")
                out.extend(f"  {s}" for s in items[:limit])
                if len(items) > limit:
                    out.append(f"  ... and {len(items) - limit} more")

        section("rejected", [f"{unit} {r.line}: {r.reason}" for r in self.rejected])
        section("duplicate ids (last occurrence kept)",
                [f"{d.id!r} on {unit}s {', '.join(map(str, d.lines))}" for d in self.duplicates])
        section("warnings", [f"{unit} {w.line}: {w.reason}" for w in self.warnings])
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Catalog:
    """Products in a fixed order; row ``i`` is ``products[i]``. Ids must be unique. Read-only after creation."""

    def __init__(self, products: Sequence[Product]) -> None:
        self.products: list[Product] = list(products)
        self._ids = [p.id for p in self.products]
        self._rows: dict[str, int] = {}
        for i, item_id in enumerate(self._ids):
            if item_id in self._rows:
                raise ValueError(f"duplicate item id {item_id!r} at rows {self._rows[item_id]} and {i}")
            self._rows[item_id] = i

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __getitem__(self, row: int) -> Product:
        return self.products[row]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def row(self, item_id: str) -> int:
        """Catalog row of ``item_id``; raises :class:`NotFound`."""
        try:
            return self._rows[item_id]
        except KeyError:
            raise NotFound(f"unknown item {item_id!r}") from None

    @property
    def id_map(self) -> Mapping[str, int]:
        """Read-only ``{item id: row}``; rows never leave the engine."""
        return MappingProxyType(self._rows)

    def get(self, item_id: str) -> Product | None:
        i = self._rows.get(item_id)
        return None if i is None else self.products[i]

    @property
    def ids(self) -> list[str]:
        """Item ids in row order (a shared list: do not modify)."""
        return self._ids

    def content_hash(self) -> str:
        """SHA-256 hex of the canonical JSON (sorted keys) of all products in order."""
        payload = json.dumps([p.to_dict() for p in self.products], sort_keys=True,
                             ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- reading


def catalog_format(path: str | Path) -> str:
    """``"csv"``, ``"jsonl"`` or ``"parquet"`` from the file name; raises :class:`CatalogError`."""
    name = Path(path).name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise CatalogError(
        f"{path}: unknown catalog format; use .csv, .csv.gz, .jsonl, .jsonl.gz, .ndjson, .json or .parquet"
    )


def read_catalog(path: str | Path) -> tuple[Catalog, CatalogReport]:
    """Read, clean and check a catalog file; the format comes from the extension.

    Rows without ``id`` or ``title`` (after cleaning) and malformed lines are rejected with their line
    number. For a duplicate id the data of the last occurrence is kept at the position of the first.
    Columns outside the schema go into ``attributes``. Raises :class:`CatalogError` for a missing or
    unreadable file, an unknown extension, or a CSV/Parquet file without ``id`` and ``title`` columns.
    """
    path = Path(path)
    fmt = catalog_format(path)
    if not path.exists():
        raise CatalogError(f"catalog file {path} does not exist")
    if not path.is_file():
        raise CatalogError(f"catalog path {path} is not a file")
    builder = _Builder(CatalogReport(path=str(path), format=fmt))
    try:
        if fmt == "csv":
            _read_csv(path, builder)
        elif fmt == "jsonl":
            _read_jsonl(path, builder)
        else:
            _read_parquet(path, builder)
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except (OSError, EOFError, zlib.error) as e:
        raise CatalogError(f"{path}: cannot read: {e}") from e
    return builder.finish()


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _read_csv(path: Path, b: _Builder) -> None:
    rows = csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise CatalogError(f"{path}: empty file, expected a header row with id and title")
    header = first[1]
    columns = b.set_columns(header)
    width = len(header)
    for line, cells in rows:
        b.report.rows_read += 1
        if len(cells) > width:
            b.reject(line, f"{len(cells)} fields but the header has {width} (unquoted delimiter?)")
            continue
        if len(cells) < width:
            b.warn(line, f"{len(cells)} fields but the header has {width}; missing fields left empty")
        b.add_row(line, dict(zip(columns, cells)))


def _read_jsonl(path: Path, b: _Builder) -> None:
    with _open_binary(path) as fh:
        for n, raw in enumerate(fh, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            b.report.rows_read += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                b.reject(n, f"not UTF-8 ({e.reason} at column {e.start + 1})")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                if n == 1 and text.lstrip().startswith("["):
                    raise CatalogError(f"{path}: a JSON array; write one JSON object per line (JSON Lines)") from e
                b.reject(n, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(obj, dict):
                if n == 1 and isinstance(obj, list):
                    raise CatalogError(f"{path}: a JSON array; write one JSON object per line (JSON Lines)")
                b.reject(n, f"not a JSON object but {type(obj).__name__}")
                continue
            b.add_row(n, b.map_keys(obj))


def _read_parquet(path: Path, b: _Builder) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = b.set_columns(parquet.schema_arrow.names)
        row = 0
        for batch in parquet.iter_batches(batch_size=65536):
            for values in zip(*(col.to_pylist() for col in batch.columns)):
                row += 1
                b.report.rows_read += 1
                b.add_row(row, dict(zip(columns, values)))
    except pa.ArrowException as e:
        raise CatalogError(f"{path}: not a readable Parquet file: {e}") from e


def _canonical(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class _Builder:
    """Turns raw rows into products and fills the report."""

    def __init__(self, report: CatalogReport) -> None:
        self.report = report
        self.products: list[Product] = []
        self.index: dict[str, int] = {}
        self.lines: dict[str, list[int]] = {}

    def set_columns(self, header: Sequence[str]) -> list[str]:
        """Map header cells to field names (unknown ones kept by name); raises without id or title."""
        out: list[str] = []
        seen: set[str] = set()
        for i, raw in enumerate(header):
            name = str(raw).strip()
            key = _canonical(name) if _canonical(name) in FIELDS else (name or f"column_{i + 1}")
            if key in seen:
                raise CatalogError(f"{self.report.path}: column {name!r} appears twice")
            seen.add(key)
            if key not in FIELDS:
                self.report.unknown_columns.append(key)
            out.append(key)
        missing = [f for f in REQUIRED if f not in seen]
        if missing:
            raise CatalogError(
                f"{self.report.path}: missing required column(s) {', '.join(missing)}; "
                f"found: {', '.join(map(str, header))}"
            )
        return out

    def map_keys(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Schema names for JSON keys; unknown keys are kept and listed once in the report."""
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = _canonical(k) if _canonical(k) in FIELDS else k
            if key not in FIELDS and key not in self.report.unknown_columns:
                self.report.unknown_columns.append(key)
            out[key] = v
        return out

    def reject(self, line: int, reason: str) -> None:
        self.report.rejected.append(Rejected(line, reason))

    def warn(self, line: int, reason: str) -> None:
        self.report.warnings.append(Rejected(line, reason))

    def _count(self, applied: set[str]) -> None:
        for kind in applied:
            self.report.cleaned[kind] = self.report.cleaned.get(kind, 0) + 1

    def _text(self, value: Any) -> str:
        if _missing(value):
            return ""
        text, applied = _text.clean_text(_to_str(value))
        self._count(applied)
        return text

    def add_row(self, line: int, row: Mapping[str, Any]) -> None:
        raw_id = row.get("id")
        if isinstance(raw_id, (dict, list, bool)):
            self.reject(line, f"id: expected a string or number, got {type(raw_id).__name__}")
            return
        item_id = "" if _missing(raw_id) else _to_str(raw_id)
        if item_id != item_id.strip():
            self._count({_text.WHITESPACE_NORMALISED})
            item_id = item_id.strip()
        if not item_id:
            self.reject(line, "missing id")
            return
        title = self._text(row.get("title"))
        if not title:
            self.reject(line, f"missing title (id {item_id!r})")
            return
        price, problem = parse_price(row.get("price"))
        if problem:
            self.warn(line, f"price: {problem}, left empty")
        in_stock, problem = parse_bool(row.get("in_stock"))
        if problem:
            self.warn(line, f"in_stock: {problem}, left empty")
        created_at, problem = parse_datetime(row.get("created_at"))
        if problem:
            self.warn(line, f"created_at: {problem}, left empty")
        product = Product(
            id=item_id, title=title, description=self._text(row.get("description")),
            category=self._category(line, row.get("category")), brand=self._text(row.get("brand")),
            price=price, in_stock=in_stock, url=self._url(row.get("url")), image_url=self._url(row.get("image_url")),
            attributes=self._attributes(line, row), created_at=created_at,
        )
        if item_id in self.index:
            self.products[self.index[item_id]] = product
            self.lines[item_id].append(line)
        else:
            self.index[item_id] = len(self.products)
            self.products.append(product)
            self.lines[item_id] = [line]

    def _url(self, value: Any) -> str:
        text = "" if _missing(value) else _to_str(value)
        if text != text.strip():
            self._count({_text.WHITESPACE_NORMALISED})
        return text.strip()

    def _category(self, line: int, value: Any) -> tuple[str, ...]:
        """Segments of ``"A > B"`` or of a list of strings; each cleaned, empty ones dropped."""
        if _missing(value) or value == "":
            return ()
        if isinstance(value, str):
            items = [value]
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            self.warn(line, f"category: expected 'A > B' or a list of strings, got {type(value).__name__}, left empty")
            return ()
        return tuple(s for v in items for s in category_segments(self._text(v)))

    def _attributes(self, line: int, row: Mapping[str, Any]) -> dict[str, str]:
        attrs: dict[str, str] = {}
        value = row.get("attributes")
        if isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                self.warn(line, f"attributes: invalid JSON ({e.msg}), ignored")
                value = None
        if isinstance(value, list) and all(isinstance(kv, (list, tuple)) and len(kv) == 2 for kv in value):
            value = dict(value)  # Parquet map columns arrive as (key, value) pairs
        if isinstance(value, dict):
            for k, v in value.items():
                if not _missing(v):
                    attrs[self._text(k)] = self._text(v)
        elif not _missing(value) and value != "":
            self.warn(line, f"attributes: expected a JSON object, got {type(value).__name__}, ignored")
        for key, v in row.items():
            text = "" if key in FIELDS else self._text(v)
            if not text:
                continue
            if key in attrs:
                self.warn(line, f"{key}: also in attributes, the attributes value was kept")
                continue
            attrs[key] = text
        return {k: v for k, v in attrs.items() if k}

    def finish(self) -> tuple[Catalog, CatalogReport]:
        r = self.report
        r.accepted = len(self.products)
        r.duplicates = [Duplicate(i, ls) for i, ls in self.lines.items() if len(ls) > 1]
        return Catalog(self.products), r


def _missing(value: Any) -> bool:
    """None, or the NaN that Parquet/pandas use for an empty number."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def parse_price(value: Any) -> tuple[float | None, str | None]:
    """Price from a number or a string like ``"12.50"``, ``"$12.50"``, ``"1,299.00"``, ``"12,50 EUR"``.

    Returns ``(price, None)``, ``(None, None)`` when empty, or ``(None, problem)`` when unusable or negative.
    """
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"not a number {value!r}"
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number):
            return None, None
    else:
        text = str(value).strip()
        if not text:
            return None, None
        m = _CURRENCY.match(text)
        digits = m.group(1).replace(" ", "") if m else text
        if "," in digits and "." in digits:
            decimal = "." if digits.rfind(".") > digits.rfind(",") else ","
            digits = digits.replace("," if decimal == "." else ".", "").replace(",", ".")
        elif "," in digits:
            thousands = re.fullmatch(r"-?\d{1,3}(,\d{3})+", digits)
            digits = digits.replace(",", "" if thousands else ".")
        if not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", digits):
            return None, f"not a number {text!r}"
        number = float(digits)
    if math.isinf(number):
        return None, f"not a number {value!r}"
    if number < 0:
        return None, f"negative {value!r}"
    return number, None


def parse_bool(value: Any) -> tuple[bool | None, str | None]:
    """``in_stock`` from a bool, 1/0 or true/false/yes/no/y/n/"in stock"/"out of stock" (any case)."""
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None, None
        if value in (0, 1):
            return bool(value), None
        return None, f"not a yes/no value {value!r}"
    word = str(value).strip()
    if not word:
        return None, None
    try:
        return _text.parse_bool(word), None
    except ValueError:
        return None, f"not a yes/no value {word!r}"


def parse_datetime(value: Any) -> tuple[str | None, str | None]:
    """``created_at`` from an ISO 8601 date or date-time (``2024-05-01``, ``2024-05-01T09:30:00+02:00``; without
    an offset, UTC) or epoch seconds (a number, or a string of one), as ISO 8601 UTC to the second
    (``"2024-05-01T07:30:00Z"``). Returns ``(None, None)`` when empty, ``(None, problem)`` when unusable
    or before 1970."""
    if value is None or isinstance(value, bool):
        return None, None if value is None else f"not a date {value!r}"
    if isinstance(value, float) and math.isnan(value):
        return None, None
    when: dt.datetime
    if isinstance(value, dt.datetime):  # Parquet timestamps
        when = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    else:
        text = str(value).strip()
        if not text:
            return None, None
        try:
            if isinstance(value, (int, float)) or re.fullmatch(r"\d+(\.\d*)?", text):
                when = dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
            else:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
                when = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None, f"not a date {text!r} (ISO 8601, or epoch seconds)"
    when = when.astimezone(dt.timezone.utc)
    if when.year < 1970:
        return None, f"before 1970 {value!r}"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), None


# --------------------------------------------------------------------------- saved catalogs


def write_catalog_jsonl(catalog: Catalog, path: str | Path) -> None:
    """Write one ``Product.to_dict()`` per line (UTF-8, not ASCII-escaped), replacing ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for p in catalog:
            fh.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_catalog_jsonl(path: str | Path) -> Catalog:
    """Reload a catalog written by :func:`write_catalog_jsonl` (trusted: no cleaning, no report)."""
    path = Path(path)
    products: list[Product] = []
    try:
        with path.open("r", encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        products.append(Product.from_dict(json.loads(line)))
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                        raise CatalogError(f"{path}: line {n}: not a saved product: {e}") from e
    except OSError as e:
        raise CatalogError(f"cannot read catalog {path}: {e}") from e
    try:
        return Catalog(products)
    except ValueError as e:
        raise CatalogError(f"{path}: {e}") from e
