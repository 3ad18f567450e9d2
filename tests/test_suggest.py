"""Type-ahead suggestions: prefix and multi-word matching, typos, accents, ranking, de-duplication, limits, HTTP.

Expected values come from the fixture catalog file itself (tests/fixtures/products.jsonl) and, for the
typo rule, from a plain dynamic-programming edit distance written here, checked against every entry.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from engine.catalog import Product
from engine.errors import InvalidQuery
from engine.service import Engine
from engine.suggest import Suggester
from tests.conftest import FIXTURE_CATALOG

WORD = re.compile(r"[^\W_]+")


def fixture_products() -> list[Product]:
    with FIXTURE_CATALOG.open(encoding="utf-8") as fh:
        return [Product.from_dict(json.loads(line)) for line in fh if line.strip()]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def category_counts() -> dict[str, int]:
    """Full path of every category prefix -> items under it (the fixture has one spelling per path)."""
    counts: dict[str, int] = {}
    for p in fixture_products():
        for depth in range(1, len(p.category) + 1):
            path = " > ".join(p.category[:depth])
            counts[path] = counts.get(path, 0) + 1
    return counts


def texts(suggestions: list[dict[str, Any]]) -> list[str]:
    return [s["text"] for s in suggestions]


def test_prefix_gives_the_category_first_then_items_shorter_first(shared_engine: Engine) -> None:
    out = shared_engine.suggest("fila")
    assert out.q == "fila" and out.version == shared_engine.snapshot().version
    got = out.suggestions
    filament = "Industrial & Scientific > 3D Printing > Filament"
    assert got[0] == {"text": "Filament", "kind": "category", "category": filament,
                      "count": category_counts()[filament]}
    by_title: dict[str, Product] = {}
    for p in sorted(fixture_products(), key=lambda p: p.id):  # identical titles: the first id stays
        if any(w.startswith("fila") for w in words(p.title)):
            by_title.setdefault(p.title.lower(), p)
    exact = sorted(by_title.values(), key=lambda p: (len(p.title), p.title.lower(), p.id))
    assert got[1 : 1 + len(exact)] == [
        {"text": p.title, "kind": "item", "id": p.id, "category": p.category_path} for p in exact]
    # what follows (typo matches, to fill k) has no word starting with "fila"
    assert all(not any(w.startswith("fila") for w in words(s["text"])) for s in got[1 + len(exact):])
    assert len(got) == 8


def test_earlier_words_match_whole_words_and_the_last_a_prefix(shared_engine: Engine) -> None:
    got = shared_engine.suggest("pla fil", k=20).suggestions
    expected = {p.title for p in fixture_products()
                if "pla" in words(p.title) and any(w.startswith("fil") for w in words(p.title))}
    assert set(texts(got)) == expected and len(got) == len(expected) == 2
    assert all(s["kind"] == "item" for s in got)
    # "fil" is no whole word of any entry, and "Build Plate" does not have the word "pla"
    assert shared_engine.suggest("fil pla").suggestions == []
    # a trailing space ends the last word: "glass " is whole, "glass" a prefix (of "Glassware" too)
    whole = texts(shared_engine.suggest("glass ", k=20).suggestions)
    prefix = texts(shared_engine.suggest("glass", k=20).suggestions)
    assert "Glassware" in prefix and "Glassware" not in whole
    assert set(whole) == {p.title for p in fixture_products() if "glass" in words(p.title)}


@pytest.mark.parametrize("typed, wanted", [
    ("gloces", "gloves"),       # substitution
    ("glvoes", "gloves"),       # transposition
    ("glves", "gloves"),        # deletion
    ("glovves", "gloves"),      # insertion
    ("filamnet", "filament"),   # transposition, 8 letters
    ("erlenmyer", "erlenmeyer"),
])
def test_one_typo_in_a_word_of_four_or_more_letters(shared_engine: Engine, typed: str, wanted: str) -> None:
    got = shared_engine.suggest(typed, k=20).suggestions
    titles = {p.title for p in fixture_products() if wanted in words(p.title)}
    assert titles and titles <= set(texts(got))


def test_two_typos_only_from_eight_letters(shared_engine: Engine) -> None:
    # a whole word (trailing space) two edits from "thermometer": transposition + deletion
    got = shared_engine.suggest("thremometr ", k=20).suggestions
    assert texts(got) == [p.title for p in fixture_products() if "thermometer" in words(p.title)]
    assert "Soldering" in texts(shared_engine.suggest("solderin").suggestions)
    assert "Soldering" in texts(shared_engine.suggest("sodlerng").suggestions)  # 2 edits from "solderin"
    # 6 letters, 2 edits from "gloves": too far
    assert shared_engine.suggest("glaces", k=20).suggestions == []
    # under 4 letters: no typo allowed
    assert shared_engine.suggest("plz").suggestions == []


def test_case_and_accents_do_not_matter(shared_engine: Engine) -> None:
    plain = shared_engine.suggest("filament").suggestions
    assert shared_engine.suggest("FÍLAMENT").suggestions == plain
    assert shared_engine.suggest("Filament").suggestions == plain
    s = Suggester.from_products([
        Product(id="torch", title="Crème Brûlée Torch", category=("Küche", "Brenner")),
        Product(id="pan", title="Paella Pan", category=("Küche",)),
    ])
    assert [e["id"] for e in s.suggest("creme brul")] == ["torch"]
    assert [e["id"] for e in s.suggest("CRÈME")] == ["torch"]
    assert s.suggest("kuche")[0] == {"text": "Küche", "kind": "category", "category": "Küche", "count": 2}


def test_an_empty_catalog_or_a_query_without_words_suggests_nothing(shared_engine: Engine) -> None:
    assert Suggester.from_products([]).suggest("filament") == []
    assert shared_engine.suggest("-- !").suggestions == []


def test_categories_rank_by_item_count_before_items(shared_engine: Engine) -> None:
    got = shared_engine.suggest("p", k=20).suggestions
    counts = category_counts()
    leaves: dict[str, tuple[int, str]] = {}
    for path, n in counts.items():
        leaf = path.split(" > ")[-1]
        if any(w.startswith("p") for w in words(leaf)) and (leaf not in leaves or n > leaves[leaf][0]):
            leaves[leaf] = (n, path)
    expected = sorted(leaves.items(), key=lambda e: (-e[1][0], len(e[0]), e[0].lower()))
    assert [(s["text"], s["count"], s["category"]) for s in got[: len(expected)]] == [
        (leaf, n, path) for leaf, (n, path) in expected]
    assert all(s["kind"] == "item" for s in got[len(expected):])


def test_identical_texts_are_shown_once(shared_engine: Engine) -> None:
    got = shared_engine.suggest("pla 3d printer filament", k=20).suggestions
    assert [s["id"] for s in got] == ["fil-pla-red"]  # pla-dup-title has the same title
    test = [s for s in shared_engine.suggest("test instruments", k=20).suggestions if s["kind"] == "category"]
    counts = category_counts()
    assert test == [{"text": "Test Instruments", "kind": "category",
                     "category": "Industrial & Scientific > Test Instruments",
                     "count": counts["Industrial & Scientific > Test Instruments"]}]
    assert counts["Industrial & Scientific > Test Instruments"] > counts[
        "Industrial & Scientific > Lab Supplies > Test Instruments"]
    for q in ("i", "p", "fila", "gloves"):
        shown = [t.lower() for t in texts(shared_engine.suggest(q, k=20).suggestions)]
        assert len(shown) == len(set(shown))


def test_k_limits_the_answer(shared_engine: Engine) -> None:
    matching = {p.title.lower() for p in fixture_products() if any(w.startswith("p") for w in words(p.title))}
    matching |= {path.split(" > ")[-1].lower() for path in category_counts()
                 if any(w.startswith("p") for w in words(path.split(" > ")[-1]))}
    assert len(matching) > 20
    assert len(shared_engine.suggest("p", k=3).suggestions) == 3
    assert len(shared_engine.suggest("p").suggestions) == 8
    everything = shared_engine.suggest("p", k=20).suggestions
    assert len(everything) == 20 and everything[:3] == shared_engine.suggest("p", k=3).suggestions
    for k in (0, 21):
        with pytest.raises(InvalidQuery) as e:
            shared_engine.suggest("p", k=k)
        assert e.value.field == "k"


def osa(a: str, b: str) -> list[list[int]]:
    """Optimal string alignment distances of every prefix pair."""
    d = [[i + j if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d


def reference_cost(query: list[str], entry: list[str], prefix_last: bool) -> int | None:
    """The documented rule, spelled out: edits of the best match of each query word, summed."""
    total = 0
    for i, q in enumerate(query):
        budget = 0 if len(q) < 4 or any(c.isdigit() for c in q) else 1 if len(q) < 8 else 2
        best = None
        for w in entry:
            if prefix_last and i == len(query) - 1:
                cost = 0 if w.startswith(q) else min(osa(q, w)[len(q)]) if w[0] == q[0] else None
            else:
                cost = 0 if w == q else osa(q, w)[len(q)][len(w)] if w[0] == q[0] else None
            if cost is not None and cost <= (budget if cost else 0) and (best is None or cost < best):
                best = cost
        if best is None:
            return None
        total += best
    return total


def test_matches_and_order_equal_the_rule_checked_entry_by_entry() -> None:
    """Every title and category name that the documented rule accepts, and no other, in order of edits."""
    products = fixture_products()
    s = Suggester.from_products(products)
    candidates = {p.title.lower(): words(p.title) for p in products}
    candidates |= {leaf.lower(): words(leaf) for leaf in (path.split(" > ")[-1] for path in category_counts())}
    vocab = sorted({w for ws in candidates.values() for w in ws if len(w) >= 4 and not any(c.isdigit() for c in w)})
    rng = random.Random(7)
    queries = ["fila", "filamnet", "pla fil", "nitrle glov", "glass beakr", "solderin", "borosilcate gl", "tst"]
    for _ in range(60):
        w = list(rng.choice(vocab))
        for _ in range(rng.randint(0, 2)):
            pos = rng.randrange(1, len(w))
            op = rng.choice("isdt")
            if op == "i":
                w.insert(pos, rng.choice("aeilnorst"))
            elif op == "s":
                w[pos] = rng.choice("aeilnorst")
            elif op == "d" and len(w) > 4:
                del w[pos]
            elif op == "t" and pos + 1 < len(w):
                w[pos], w[pos + 1] = w[pos + 1], w[pos]
        queries.append("".join(w[: rng.randint(4, len(w))]))
    for q in queries:
        got = [t.lower() for t in texts(s.suggest(q, k=len(s)))]
        cost = {text: reference_cost(words(q), ws, True) for text, ws in candidates.items()}
        assert set(got) == {text for text, c in cost.items() if c is not None}, q
        edits = [cost[t] or 0 for t in got]  # every one is a match (above): None does not occur
        assert edits == sorted(edits), q


def test_suggest_over_http(client: Any) -> None:
    resp = client.get("/v1/suggest", query_string={"q": "glove", "k": 2})
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"q", "version", "suggestions"} and body["q"] == "glove"
    assert body["suggestions"][0] == {"text": "Gloves", "kind": "category",
                                      "category": "Industrial & Scientific > Lab & Safety > Gloves",
                                      "count": category_counts()["Industrial & Scientific > Lab & Safety > Gloves"]}
    assert set(body["suggestions"][1]) == {"text", "kind", "id", "category"} and len(body["suggestions"]) == 2
    assert client.get("/v1/suggest", query_string={"q": "x" * 100}).status_code == 200
    assert client.get("/v1/suggest", query_string={"q": "!!!"}).get_json()["suggestions"] == []


@pytest.mark.parametrize("params, field", [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "x" * 101}, "q"),
    ({"q": "fila", "k": "0"}, "k"),
    ({"q": "fila", "k": "21"}, "k"),
    ({"q": "fila", "k": "many"}, "k"),
    ({"q": "fila", "k": "2.5"}, "k"),
])
def test_suggest_bad_parameters(client: Any, params: dict[str, str], field: str) -> None:
    resp = client.get("/v1/suggest", query_string=params)
    assert resp.status_code == 400 and resp.is_json
    err = resp.get_json()["error"]
    assert err["field"] == field and field in err["message"]


def test_the_server_builds_each_version_index_in_the_background(config: Any, encoder: Any, tmp_path: Any) -> None:
    import time

    from engine import pipeline

    def wait_for(version: str) -> None:
        deadline = time.time() + 30
        while (engine._suggester is None or engine._suggester[0] != version) and time.time() < deadline:
            time.sleep(0.02)
        assert engine._suggester is not None and engine._suggester[0] == version

    engine = Engine(config, encoder=encoder, warm_suggestions=True)
    first = engine.snapshot().version
    wait_for(first)  # built without any suggestion request
    rows = [json.loads(line) for line in FIXTURE_CATALOG.read_text().splitlines()]
    for r in rows:
        if r["id"] == "goggles":
            r["title"] = "Zeppelin Safety Goggles, Anti-Fog"
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = pipeline.build(config, catalog, encoder=encoder).version
    with engine._suggester_lock:  # as while the new version's index is being built
        stale = engine.suggest("zeppel")
    assert stale.suggestions == []  # answered at once, from the previous version's index
    wait_for(second)
    assert [s.get("id") for s in engine.suggest("zeppel").suggestions] == ["goggles"]
