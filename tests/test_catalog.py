"""Catalog ingestion: formats, line numbers, cleaning, parsing, errors, hashing and the demo catalog."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.catalog import (
    Catalog,
    Product,
    load_catalog_jsonl,
    parse_bool,
    parse_datetime,
    parse_price,
    read_catalog,
    write_catalog_jsonl,
)
from engine.errors import CatalogError, NotFound
from engine.text import clean_text

DATA = Path(__file__).parent / "data"
DEMO = Path(__file__).parent.parent / "data" / "demo" / "catalog.jsonl"

EXPECTED_GOOD = [
    Product(
        id="SKU-1", title="Cordless Drill 18V", description="Powerful drill. 2 batteries Case",
        category=("Tools", "Power Tools", "Drills"), brand="Acme", price=1299.0, in_stock=True,
        url="https://shop.example/p/sku-1", image_url="https://shop.example/i/sku-1.jpg",
        attributes={"voltage": "18V", "color": "red"},
    ),
    Product(id="SKU-2", title="Wood Saw", description="Sharp teeth and handle", category=("Tools", "Hand Tools"),
            brand="Acme", price=12.5, in_stock=False),
    Product(id="SKU-3", title="Tom & Jerry Mug", attributes={"color": "blue"}),
]


def _write_parquet(path: Path) -> None:
    table = pa.table({
        "id": ["SKU-1", "SKU-2", "SKU-3"],
        "title": ["Cordless Drill <b>18V</b>", "Ｗｏｏｄ Ｓａｗ", "Tom &amp; Jerry Mug"],
        "description": [
            "<p>Powerful&nbsp;drill.</p><ul><li>2 batteries</li><li>Case</li></ul><script>track()</script>",
            "Sharp\u00a0teeth\t and  handle", None,
        ],
        "category": ["Tools > Power Tools > Drills", "Tools >  > Hand Tools ", None],
        "brand": ["Acme", "  Acme ", None],
        "price": pa.array([1299.0, 12.5, None], pa.float64()),
        "in_stock": pa.array([True, False, None], pa.bool_()),
        "url": ["https://shop.example/p/sku-1", None, None],
        "image_url": ["https://shop.example/i/sku-1.jpg", None, None],
        "attributes": pa.array([[("voltage", "18V")], None, None], pa.map_(pa.string(), pa.string())),
        "color": ["red", None, "blue"],
    })
    pq.write_table(table, path)


@pytest.fixture
def good_files(tmp_path: Path) -> dict[str, Path]:
    csv_path = tmp_path / "catalog.csv"
    shutil.copy(DATA / "catalog_good.csv", csv_path)
    gz_path = tmp_path / "catalog.csv.gz"
    gz_path.write_bytes(gzip.compress(csv_path.read_bytes()))
    jsonl_path = tmp_path / "catalog.jsonl"
    shutil.copy(DATA / "catalog_good.jsonl", jsonl_path)
    parquet_path = tmp_path / "catalog.parquet"
    _write_parquet(parquet_path)
    return {"csv": csv_path, "csv.gz": gz_path, "jsonl": jsonl_path, "parquet": parquet_path}


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "jsonl", "parquet"])
def test_every_format_loads_the_same_products(good_files: dict[str, Path], kind: str) -> None:
    catalog, report = read_catalog(good_files[kind])
    assert catalog.products == EXPECTED_GOOD
    assert report.ok() and not report.duplicates and not report.warnings
    assert (report.rows_read, report.accepted) == (3, 3)
    assert report.format == kind.removesuffix(".gz")
    assert report.unknown_columns == ["color"]
    assert report.cleaned["html_stripped"] == 2
    assert report.cleaned["unicode_normalised"] >= 2  # full-width title, non-breaking space


def test_csv_rejects_report_real_line_numbers() -> None:
    catalog, report = read_catalog(DATA / "catalog_bad.csv")
    # P1's description spans lines 2-4, so the rows after it start on lines 5, 6, 7, 8, 9.
    assert [(r.line, r.reason.split(" (")[0]) for r in report.rejected] == [
        (5, "missing id"),
        (6, "missing title"),
        (8, "7 fields but the header has 5"),
    ]
    assert [(w.line, w.reason) for w in report.warnings] == [
        (7, "price: not a number 'abc', left empty"),
        (7, "in_stock: not a yes/no value 'maybe', left empty"),
    ]
    assert not report.ok()
    assert (report.rows_read, report.accepted) == (6, 2)
    assert catalog.ids == ["P1", "P3"]
    assert catalog.get("P3") == Product(id="P3", title="Third", description="ok")


def test_duplicates_report_all_lines_and_last_wins() -> None:
    catalog, report = read_catalog(DATA / "catalog_bad.csv")
    assert [(d.id, d.lines) for d in report.duplicates] == [("P1", [2, 9])]
    p1 = catalog[0]  # position of the first occurrence, data of the last
    assert (p1.id, p1.title, p1.description, p1.price, p1.in_stock) == ("P1", "First product again", "", 12.5, False)
    assert report.rows_read == report.accepted + len(report.rejected) + sum(len(d.lines) - 1 for d in report.duplicates)


def test_jsonl_rejects_and_duplicates() -> None:
    catalog, report = read_catalog(DATA / "catalog_bad.jsonl")
    reasons = [(r.line, r.reason) for r in report.rejected]
    assert reasons[0][0] == 2 and reasons[0][1].startswith("invalid JSON: ")
    assert reasons[1:] == [(4, "not a JSON object but list"), (5, "missing id"), (6, "missing title (id 'J3')")]
    assert [(d.id, d.lines) for d in report.duplicates] == [("J1", [1, 8])]
    assert catalog.ids == ["J1", "42"]
    assert catalog[0] == Product(id="J1", title="One again")
    assert catalog.get("42") == Product(id="42", title="Numeric id", price=3.0, in_stock=True)
    assert report.rows_read == 7  # the blank line 3 is not a row


def test_html_is_stripped_and_entities_decoded() -> None:
    raw = "<div><p>Fast&nbsp;&amp; <b>quiet</b></p><br/><style>p{}</style>fan<script>x()</script></div>"
    text, applied = clean_text(raw)
    assert text == "Fast & quiet fan"
    assert {"html_stripped", "unicode_normalised", "whitespace_normalised"} <= applied
    assert clean_text("AT&amp;T &lt;3") == ("AT&T <3", {"entities_decoded"})
    # Text that only looks like markup is left alone.
    assert clean_text("size <Large> & 5 <10 mm") == ("size <Large> & 5 <10 mm", set())


def test_unicode_and_whitespace_normalisation() -> None:
    assert clean_text("Ｆｕｌｌ\u00a0width") == ("Full width", {"unicode_normalised"})
    assert clean_text("zero\u200bwidth\x07 bell") == ("zerowidth bell", {"control_chars_removed"})
    assert clean_text("  many \n\t spaces  ") == ("many spaces", {"whitespace_normalised"})
    assert clean_text("ﬁne ½") == ("fine 1⁄2", {"unicode_normalised"})
    assert clean_text("plain") == ("plain", set())


@pytest.mark.parametrize(("raw", "price", "problem"), [
    ("12.50", 12.5, None), ("$12.50", 12.5, None), ("1,299.00", 1299.0, None), ("USD 7", 7.0, None),
    ("12,50 €", 12.5, None), ("1.299,00", 1299.0, None), (3, 3.0, None), (0, 0.0, None),
    ("", None, None), (None, None, None), (float("nan"), None, None),
    ("abc", None, "not a number 'abc'"), ("-5", None, "negative '-5'"), (-1.5, None, "negative -1.5"),
    ("1e3", None, "not a number '1e3'"), (True, None, "not a number True"),
])
def test_price_parsing(raw: object, price: float | None, problem: str | None) -> None:
    assert parse_price(raw) == (price, problem)


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("FALSE", False), ("1", True), ("0", False), ("Yes", True), ("no", False),
    ("y", True), ("N", False), (True, True), (False, False), (1, True), (0, False), ("in stock", True),
    ("", None), (None, None),
])
def test_in_stock_parsing(raw: object, value: bool | None) -> None:
    assert parse_bool(raw) == (value, None)


def test_in_stock_rejects_other_values() -> None:
    assert parse_bool("maybe") == (None, "not a yes/no value 'maybe'")
    assert parse_bool(2) == (None, "not a yes/no value 2")


@pytest.mark.parametrize(("raw", "value", "problem"), [
    ("2024-05-01", "2024-05-01T00:00:00Z", None), ("2024-05-01T09:30:00+02:00", "2024-05-01T07:30:00Z", None),
    ("2024-05-01T09:30:00Z", "2024-05-01T09:30:00Z", None), ("2024-05-01 09:30", "2024-05-01T09:30:00Z", None),
    (1714550400, "2024-05-01T08:00:00Z", None), ("1714550400", "2024-05-01T08:00:00Z", None),
    ("", None, None), (None, None, None), (float("nan"), None, None),
    ("yesterday", None, "not a date 'yesterday' (ISO 8601, or epoch seconds)"),
    ("1969-12-31", None, "before 1970 '1969-12-31'"), (-5, None, "before 1970 -5"), (True, None, "not a date True"),
])
def test_created_at_parsing(raw: object, value: str | None, problem: str | None) -> None:
    assert parse_datetime(raw) == (value, problem)


def test_created_at_is_read_from_every_format_and_a_bad_one_is_left_empty(tmp_path: Path) -> None:
    path = tmp_path / "dated.csv"
    path.write_text("id,title,created_at\nA,Alpha,2024-05-01\nB,Beta,soon\nC,Gamma,\n", encoding="utf-8")
    catalog, report = read_catalog(path)
    assert [p.created_at for p in catalog] == ["2024-05-01T00:00:00Z", None, None]
    assert [(w.line, w.reason) for w in report.warnings] == [(3, "created_at: not a date 'soon' (ISO 8601, or "
                                                                 "epoch seconds), left empty")]
    assert report.unknown_columns == [] and catalog[0].attributes == {}  # a field, not an attribute
    lines = tmp_path / "dated.jsonl"
    lines.write_text(json.dumps({"id": "A", "title": "Alpha", "created_at": 1714550400}) + "\n", encoding="utf-8")
    assert read_catalog(lines)[0][0].created_at == "2024-05-01T08:00:00Z"
    assert catalog[0].to_dict()["created_at"] == "2024-05-01T00:00:00Z"


def test_unknown_columns_go_into_attributes(tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text(
        'sku_group,ID,Title,Image URL,attributes\ng1,A,Alpha,http://x/a.png,"{""size"": 3, ""sku_group"": ""own""}"\n',
        encoding="utf-8",
    )
    catalog, report = read_catalog(path)
    assert catalog[0] == Product(id="A", title="Alpha", image_url="http://x/a.png",
                                 attributes={"size": "3", "sku_group": "own"})
    assert report.unknown_columns == ["sku_group"]
    assert [w.reason for w in report.warnings] == ["sku_group: also in attributes, the attributes value was kept"]
    assert "unknown columns (kept in attributes): sku_group" in report.summary_lines()


def test_semicolon_csv_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid;title;price\r\nX1;Ünïcode;12,50\r\n".encode("utf-8"))
    catalog, report = read_catalog(path)
    assert catalog.products == [Product(id="X1", title="Ünïcode", price=12.5)]
    assert report.ok()


def test_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "missing.csv")
    (tmp_path / "catalog.xlsx").write_text("x")
    with pytest.raises(CatalogError, match="unknown catalog format"):
        read_catalog(tmp_path / "catalog.xlsx")
    (tmp_path / "no_title.csv").write_text("id,name\n1,Alpha\n")
    with pytest.raises(CatalogError, match="missing required column.*title"):
        read_catalog(tmp_path / "no_title.csv")
    pq.write_table(pa.table({"title": ["a"]}), tmp_path / "no_id.parquet")
    with pytest.raises(CatalogError, match="missing required column.*id"):
        read_catalog(tmp_path / "no_id.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CatalogError, match="not a readable Parquet file"):
        read_catalog(tmp_path / "broken.parquet")
    (tmp_path / "unclosed.csv").write_text('id,title\n1,"never closed\n2,b\n')
    with pytest.raises(CatalogError, match="malformed CSV"):
        read_catalog(tmp_path / "unclosed.csv")
    (tmp_path / "array.json").write_text('[{"id": "1", "title": "a"}]\n')
    with pytest.raises(CatalogError, match="JSON Lines"):
        read_catalog(tmp_path / "array.json")
    (tmp_path / "latin1.csv").write_bytes("id,title\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        read_catalog(tmp_path / "latin1.csv")


def test_parquet_rejects_use_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", None, "c"], "title": ["A", "B", None]}), path)
    catalog, report = read_catalog(path)
    assert catalog.ids == ["a"]
    assert [(r.line, r.reason) for r in report.rejected] == [(2, "missing id"), (3, "missing title (id 'c')")]
    assert report.summary_lines()[-2:] == ["  row 2: missing id", "  row 3: missing title (id 'c')"]


def test_summary_lines_limit_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"id": "{i}"}}\n' for i in range(25)), encoding="utf-8")
    _, report = read_catalog(path)
    lines = report.summary_lines(limit=20)
    assert lines[0].endswith("25 rows read, 0 products accepted, 25 rejected, 0 duplicate ids, 0 warnings")
    assert lines[-1] == "  ... and 5 more"
    assert lines.count("rejected:") == 1 and sum(s.startswith("  line ") for s in lines) == 20
    assert json.loads(json.dumps(report.to_dict()))["rejected"][0] == {"line": 1, "reason": "missing title (id '0')"}


def test_catalog_lookup() -> None:
    catalog = Catalog(EXPECTED_GOOD)
    assert len(catalog) == 3 and list(catalog) == EXPECTED_GOOD
    assert catalog.ids == ["SKU-1", "SKU-2", "SKU-3"]
    assert catalog.row("SKU-2") == 1 and catalog[1].id == "SKU-2"
    assert "SKU-3" in catalog and "nope" not in catalog and catalog.get("nope") is None
    with pytest.raises(NotFound, match="unknown item 'nope'"):
        catalog.row("nope")
    with pytest.raises(ValueError, match="duplicate item id 'SKU-1'"):
        Catalog([EXPECTED_GOOD[0], EXPECTED_GOOD[0]])
    assert EXPECTED_GOOD[0].category_path == "Tools > Power Tools > Drills"


def test_content_hash_is_stable_and_sensitive() -> None:
    base = Catalog(EXPECTED_GOOD).content_hash()
    assert base == Catalog(list(EXPECTED_GOOD)).content_hash()
    assert len(base) == 64
    changed = [EXPECTED_GOOD[0], Product(**{**EXPECTED_GOOD[1].to_dict(), "category": ("Tools",), "price": 12.51}),
               EXPECTED_GOOD[2]]
    assert Catalog(changed).content_hash() != base
    assert Catalog(EXPECTED_GOOD[::-1]).content_hash() != base


def test_write_and_load_jsonl_round_trip(tmp_path: Path) -> None:
    catalog = Catalog(EXPECTED_GOOD + [Product(id="U-1", title="Ünïcode “quotes” ✓", attributes={"k": "v"},
                                               created_at="2024-05-01T07:30:00Z")])
    path = tmp_path / "saved.jsonl"
    write_catalog_jsonl(catalog, path)
    assert "✓" in path.read_text(encoding="utf-8")  # not ASCII-escaped
    loaded = load_catalog_jsonl(path)
    assert loaded.products == catalog.products
    assert loaded.content_hash() == catalog.content_hash()
    assert [Product.from_dict(p.to_dict()) for p in catalog] == catalog.products
    reread, report = read_catalog(path)  # a saved catalog is also a valid input, unchanged by cleaning
    assert reread.content_hash() == catalog.content_hash() and report.cleaned == {}


def test_load_catalog_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "title": "A"}\n{"title": "no id"}\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="line 2"):
        load_catalog_jsonl(path)
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog_jsonl(tmp_path / "absent.jsonl")


def test_demo_catalog_loads_cleanly() -> None:
    catalog, report = read_catalog(DEMO)
    assert len(catalog) == 4385
    assert report.ok() and not report.duplicates and not report.warnings
    assert report.cleaned == {}  # the generator already cleaned every field
    assert all(p.title and p.category and p.category[0] == "Industrial & Scientific" for p in catalog)
    assert sorted(int(p.attributes["unisrec_index"]) for p in catalog) == list(range(4385))
    assert all(p.price is None and p.in_stock is None for p in catalog)
    assert load_catalog_jsonl(DEMO).content_hash() == catalog.content_hash()
    assert catalog.get("B00TNNWMXI") is not None
    assert catalog.get("B00TNNWMXI").category == (  # type: ignore[union-attr]
        "Industrial & Scientific", "Additive Manufacturing Products", "3D Printing Supplies", "3D Printing Filament")
    assert DEMO.stat().st_size < 4_000_000
