"""Search facets and total_candidates, counted by hand over the engine's own candidate rows.

The engine here takes 5 candidates from each side (BM25, vectors), so a query's candidate set is a real
part of the 31-item fixture catalog. The expected facets are counted from the catalog file itself.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.filters import Filters
from engine import pipeline
from engine.embedding.base import Encoder
from engine.search import MAX_FACET_CATEGORIES, candidates
from engine.service import Engine
from tests.conftest import FIXTURE_CATALOG, make_config

POOL = 5
ROOT = "Industrial & Scientific"
LAB_SAFETY = f"{ROOT} > Lab & Safety"


def read_catalog(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return {d["id"]: d for d in (json.loads(line) for line in fh if line.strip())}


FIXTURE = read_catalog(FIXTURE_CATALOG)


@pytest.fixture(scope="module")
def small_pool(built_index_dir: Path, models_dir: Path, encoder: Encoder) -> Engine:
    return Engine(make_config(built_index_dir, models_dir, candidate_pool=POOL, max_k=POOL, default_k=POOL),
                  encoder=encoder)


def candidate_ids(engine: Engine, query: str, **filters: Any) -> list[str]:
    """The rows hybrid search considers for ``query`` under ``filters``, as item ids."""
    snap = engine.snapshot()
    mask = snap.filter_mask(Filters(**filters))
    rows = candidates(snap, snap.keyword.scores(query), engine.embed_query(query), engine.config.candidate_pool, mask)
    return [snap.catalog.ids[int(r)] for r in rows]


def segments(item: dict[str, Any]) -> list[str]:
    return [s.strip() for s in item["category"].split(">")] if item.get("category") else []


def hand_count(catalog: dict[str, dict[str, Any]], ids: list[str], depth: int, under: list[str] | None = None,
               lo: float | None = None, hi: float | None = None) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    for i in ids:
        item = catalog[i]
        price = item.get("price")
        if (lo is not None or hi is not None) and (price is None or (lo is not None and price < lo)
                                                   or (hi is not None and price > hi)):
            continue
        segs = segments(item)
        if under is not None and [s.lower() for s in segs[: len(under)]] != [s.lower() for s in under]:
            continue
        if len(segs) >= depth:
            counts[" > ".join(segs[:depth])] += 1
    ranked = sorted(counts.items(), key=lambda e: (-e[1], e[0]))[:MAX_FACET_CATEGORIES]
    return [{"path": path, "name": path.split(" > ")[-1], "count": n} for path, n in ranked]


def first_difference(catalog: dict[str, dict[str, Any]], ids: list[str]) -> int:
    """The depth below the longest path shared by the items' categories (that path's own depth when
    every item sits exactly there)."""
    paths = [[s.lower() for s in segments(catalog[i])] for i in ids if segments(catalog[i])]
    common = 0
    while all(len(p) > common and p[common] == paths[0][common] for p in paths):
        common += 1
    return common + 1 if any(len(p) > common for p in paths) else common


def price_range(catalog: dict[str, dict[str, Any]], ids: list[str]) -> dict[str, float | None]:
    prices = [catalog[i]["price"] for i in ids if catalog[i].get("price") is not None]
    return {"min": min(prices), "max": max(prices)} if prices else {"min": None, "max": None}


def test_without_filters_the_facets_count_the_search_candidates(small_pool: Engine) -> None:
    for query in ("gloves", "lab safety", "digital"):
        ids = candidate_ids(small_pool, query)
        assert 0 < len(ids) < len(FIXTURE)
        # every fixture item sits under one root, and the candidates differ at depth 2
        assert {segments(FIXTURE[i])[0] for i in ids} == {ROOT}
        assert len({tuple(segments(FIXTURE[i])[:2]) for i in ids}) > 1
        result = small_pool.search(query)
        assert result.total_candidates == len(ids)
        assert result.facets == {"category": hand_count(FIXTURE, ids, 2), "price": price_range(FIXTURE, ids)}


def test_a_category_filter_shows_its_children_counted_without_it(small_pool: Engine) -> None:
    query = "lab safety"
    unfiltered = candidate_ids(small_pool, query)
    filtered = candidate_ids(small_pool, query, category=LAB_SAFETY)
    result = small_pool.search(query, filters=Filters(category=LAB_SAFETY))
    assert result.total_candidates == len(filtered)
    expected = hand_count(FIXTURE, unfiltered, 3, under=LAB_SAFETY.split(" > "))
    assert result.facets["category"] == expected
    # counting the filtered candidates instead would give other numbers: the filter does not narrow the facet
    assert hand_count(FIXTURE, filtered, 3, under=LAB_SAFETY.split(" > ")) != expected
    assert result.facets["price"] == price_range(FIXTURE, unfiltered)
    # the price range too: of "digital" items anywhere, not only of those in Lab & Safety
    digital = small_pool.search("digital", filters=Filters(category=LAB_SAFETY)).facets["price"]
    assert digital == price_range(FIXTURE, candidate_ids(small_pool, "digital")) != price_range(
        FIXTURE, candidate_ids(small_pool, "digital", category=LAB_SAFETY))
    # the root as filter: its children, which is what no filter shows here
    assert small_pool.search(query, filters=Filters(category=ROOT)).facets == small_pool.search(query).facets
    # a leaf has no children; the path is matched case-insensitively
    leaf = small_pool.search(query, filters=Filters(category=f"{LAB_SAFETY} > Gloves".upper()))
    assert leaf.facets == {"category": [], "price": price_range(FIXTURE, unfiltered)}


def test_a_price_filter_limits_the_counts_but_not_the_price_range(small_pool: Engine) -> None:
    query, lo, hi = "filament", 20.0, 25.0
    unfiltered = candidate_ids(small_pool, query)
    result = small_pool.search(query, filters=Filters(min_price=lo, max_price=hi))
    assert result.total_candidates == len(candidate_ids(small_pool, query, min_price=lo, max_price=hi))
    priced = [i for i in unfiltered if FIXTURE[i]["price"] is not None and lo <= FIXTURE[i]["price"] <= hi]
    depth = first_difference(FIXTURE, priced)
    assert depth == 3  # they all sit in 3D Printing > Filament: that category is the one entry
    assert result.facets["category"] == hand_count(FIXTURE, unfiltered, depth, lo=lo, hi=hi)
    price = result.facets["price"]
    assert price == price_range(FIXTURE, unfiltered) and (price["min"] < lo or price["max"] > hi)
    counted = sum(e["count"] for e in result.facets["category"])
    assert 0 < counted < len(unfiltered)


def test_the_in_stock_filter_applies_to_the_facets(small_pool: Engine) -> None:
    query = "gloves"
    in_stock = candidate_ids(small_pool, query, in_stock=True)
    assert in_stock != candidate_ids(small_pool, query)
    result = small_pool.search(query, filters=Filters(in_stock=True, category=LAB_SAFETY))
    assert result.facets == {"category": hand_count(FIXTURE, in_stock, 3, under=LAB_SAFETY.split(" > ")),
                             "price": price_range(FIXTURE, in_stock)}
    assert result.total_candidates == len(candidate_ids(small_pool, query, in_stock=True, category=LAB_SAFETY))


def test_facets_over_http(client: Any) -> None:
    body = client.get("/v1/search", query_string={"q": "gloves", "category": LAB_SAFETY}).get_json()
    assert isinstance(body["total_candidates"], int) and body["total_candidates"] >= len(body["hits"])
    assert {e["path"] for e in body["facets"]["category"]} <= {
        " > ".join(segments(item)[:3]) for item in FIXTURE.values() if item["category"].startswith(LAB_SAFETY)}
    assert set(body["facets"]["price"]) == {"min", "max"}


SHOP: list[dict[str, Any]] = [
    {"id": "k1", "title": "Chef Knife 20 cm", "category": "Home > Kitchen", "price": 30.0},
    {"id": "k2", "title": "Cutting Board, Bamboo", "category": "Home > Kitchen", "price": 12.0},
    {"id": "b1", "title": "Bath Towel, Cotton", "category": "Home > Bath", "price": 9.0},
    {"id": "g1", "title": "Garden Hose 15 m", "category": "Garden > Watering", "price": 25.0},
    {"id": "gift", "title": "Gift Card"},
]
SHOP += [{"id": f"p{i:02d}", "title": f"Spare Part {i}", "category": f"Parts > P{i:02d}", "price": 100.0 + i}
         for i in range(1, 23)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, encoder: Encoder) -> Engine:
    """A catalog with several roots, an uncategorised item and more leaf categories than a facet shows."""
    root = tmp_path_factory.mktemp("shop")
    catalog = root / "shop.jsonl"
    catalog.write_text("".join(json.dumps(item) + "\n" for item in SHOP), encoding="utf-8")
    config = make_config(root / "indexes", models_dir)
    pipeline.build(config, catalog, encoder=encoder)
    return Engine(config, encoder=encoder)


def test_the_level_is_the_first_depth_where_categories_differ(shop: Engine) -> None:
    catalog = {item["id"]: item for item in SHOP}
    ids = candidate_ids(shop, "kitchen")
    assert sorted(ids) == sorted(catalog)  # the pool (200) holds the whole catalog
    result = shop.search("kitchen")
    # three roots: counted at depth 1; the uncategorised gift card is not counted
    assert result.facets["category"] == hand_count(catalog, ids, 1) == [
        {"path": "Parts", "name": "Parts", "count": 22}, {"path": "Home", "name": "Home", "count": 3},
        {"path": "Garden", "name": "Garden", "count": 1}]
    assert result.facets["price"] == price_range(catalog, ids) == {"min": 9.0, "max": 122.0}
    # within the price filter only Home's items remain, in two children: those children
    cheap = shop.search("kitchen", filters=Filters(max_price=15)).facets["category"]
    assert cheap == hand_count(catalog, ids, 2, hi=15) == [
        {"path": "Home > Bath", "name": "Bath", "count": 1}, {"path": "Home > Kitchen", "name": "Kitchen", "count": 1}]
    # all in one path: that path
    assert shop.search("kitchen", filters=Filters(min_price=26, max_price=40)).facets["category"] == [
        {"path": "Home > Kitchen", "name": "Kitchen", "count": 1}]


def test_at_most_twenty_categories_by_count_then_path(shop: Engine) -> None:
    facet = shop.search("spare part", filters=Filters(category="parts")).facets["category"]
    assert facet == [{"path": f"Parts > P{i:02d}", "name": f"P{i:02d}", "count": 1}
                     for i in range(1, MAX_FACET_CATEGORIES + 1)]
    home = shop.search("kitchen", filters=Filters(category="HOME")).facets["category"]
    assert home == [{"path": "Home > Kitchen", "name": "Kitchen", "count": 2},
                    {"path": "Home > Bath", "name": "Bath", "count": 1}]
