"""Ad targeting (engine.ads.targeting): tokens, match types, category prefixes, the JSON form."""
from __future__ import annotations

from typing import Any

import pytest

from engine.ads.targeting import (Keyword, Targeting, category_matches, keyword_matches, normalize,
                                  parse_targeting, query_matches, targeting_to_dict)
from engine.errors import InvalidQuery

LAB = "Industrial & Scientific > Lab"


def test_normalize() -> None:
    assert normalize("Nitrile-Gloves (XL), 100ct") == ["nitrile", "gloves", "xl", "100ct"]
    assert normalize("  Café_crème  ÉCLAIR ") == ["café", "crème", "éclair"]
    assert normalize("--- ,,") == []


@pytest.mark.parametrize("query, expected", [
    ("nitrile gloves", True), ("Nitrile  GLOVES!", True),
    ("nitrile gloves large", False),  # an extra word
    ("gloves nitrile", False),  # order
    ("nitrile glove", False),  # the plural is not stripped
    ("nitrile", False), ("", False),
])
def test_exact(query: str, expected: bool) -> None:
    assert keyword_matches(Keyword("nitrile gloves", "exact"), query) is expected


@pytest.mark.parametrize("query, expected", [
    ("nitrile gloves", True), ("blue nitrile gloves large", True), ("box of nitrile-gloves", True),
    ("gloves nitrile", False),  # out of order
    ("nitrile blue gloves", False),  # not contiguous
    ("nitrile glove", False), ("gloves", False),
])
def test_phrase(query: str, expected: bool) -> None:
    assert keyword_matches(Keyword("nitrile gloves", "phrase"), query) is expected


@pytest.mark.parametrize("query, expected", [
    ("nitrile gloves", True), ("gloves, blue, nitrile", True),
    ("nitrile glove", True),  # simple plural, either way
    ("nitriles glove", True),
    ("nitrile", False),  # every keyword token is needed
    ("gloved nitrile", False), ("", False),
])
def test_broad(query: str, expected: bool) -> None:
    assert keyword_matches(Keyword("nitrile gloves", "broad"), query) is expected


def test_broad_es_plural() -> None:
    kw = Keyword("storage box", "broad")
    assert keyword_matches(kw, "boxes for storage")
    assert keyword_matches(Keyword("boxes", "broad"), "box")
    assert not keyword_matches(kw, "boxing storage")


def test_keyword_without_tokens_matches_nothing() -> None:
    assert not keyword_matches(Keyword("--", "broad"), "anything --")


def test_category_prefix_at_segment_boundaries() -> None:
    assert category_matches([LAB], "Industrial & Scientific > Lab > Gloves")
    assert category_matches([LAB], "industrial & scientific > lab")
    assert category_matches([LAB], "Industrial  &  Scientific>Lab")
    assert not category_matches([LAB], "Industrial & Scientific > Laboratory")
    assert not category_matches([LAB], "Industrial & Scientific")  # the target is deeper than the item
    assert not category_matches([LAB], "Home > Lab")
    assert category_matches(["Home", LAB], "Home > Kitchen")
    assert not category_matches([], "Home")
    assert not category_matches([""], "Home")
    assert not category_matches(["Home"], "")


def test_query_matches() -> None:
    t = Targeting(keywords=(Keyword("nitrile gloves", "phrase"),), categories=(LAB,))
    assert query_matches(t, "blue nitrile gloves", None)
    assert query_matches(t, "pipettes", "Industrial & Scientific > Lab > Pipettes")
    assert not query_matches(t, "pipettes", None)
    assert not query_matches(t, "pipettes", "Industrial & Scientific > Laboratory")
    assert not query_matches(Targeting(similar_to=("item-1",)), "nitrile gloves", LAB)


def test_empty_targeting() -> None:
    t = Targeting()
    assert t.empty
    assert parse_targeting(None) == t and parse_targeting({}) == t
    assert targeting_to_dict(t) == {}
    assert not query_matches(t, "anything", "Home")
    assert not Targeting(audience_categories=("Home",)).empty


FULL: dict[str, Any] = {
    "keywords": [{"text": "nitrile gloves", "match": "phrase"}, {"text": "gloves", "match": "broad"},
                 {"text": "lab coat", "match": "exact"}],
    "categories": [LAB],
    "similar_to": ["item-1", "item-2"],
    "audience": {"categories": ["Sports & Outdoors"]},
}


def test_parse_and_round_trip() -> None:
    t = parse_targeting(FULL)
    assert t.keywords[0] == Keyword("nitrile gloves", "phrase") and t.keywords[2].match == "exact"
    assert t.categories == (LAB,) and t.similar_to == ("item-1", "item-2")
    assert t.audience_categories == ("Sports & Outdoors",)
    assert targeting_to_dict(t) == FULL
    assert parse_targeting(targeting_to_dict(t)) == t
    only = parse_targeting({"similar_to": ["x"]})
    assert targeting_to_dict(only) == {"similar_to": ["x"]} and parse_targeting(targeting_to_dict(only)) == only


def _with(**changes: Any) -> dict[str, Any]:
    return {**FULL, **changes}


@pytest.mark.parametrize("obj, field", [
    ([], "targeting"),
    ({"keyword": []}, "targeting.keyword"),
    (_with(keywords="gloves"), "targeting.keywords"),
    (_with(keywords=[{"text": "a", "match": "exact"}] * 101), "targeting.keywords"),
    (_with(keywords=[{"text": "a", "match": "exact"}, {"text": "b", "match": "fuzzy"}]),
     "targeting.keywords[1].match"),
    (_with(keywords=[{"text": "a"}]), "targeting.keywords[0].match"),
    (_with(keywords=[{"match": "broad"}]), "targeting.keywords[0].text"),
    (_with(keywords=[{"text": "", "match": "broad"}]), "targeting.keywords[0].text"),
    (_with(keywords=[{"text": "x" * 81, "match": "broad"}]), "targeting.keywords[0].text"),
    (_with(keywords=[{"text": "-- !", "match": "broad"}]), "targeting.keywords[0].text"),
    (_with(keywords=[{"text": 5, "match": "broad"}]), "targeting.keywords[0].text"),
    (_with(keywords=[{"text": "a", "match": "broad", "bid": 3}]), "targeting.keywords[0].bid"),
    (_with(keywords=["gloves"]), "targeting.keywords[0]"),
    (_with(categories=["Home", "Home > > Kitchen"]), "targeting.categories[1]"),
    (_with(categories=["Home"] * 21), "targeting.categories"),
    (_with(categories=[3]), "targeting.categories[0]"),
    (_with(similar_to=[f"i{n}" for n in range(51)]), "targeting.similar_to"),
    (_with(similar_to=["ok", ""]), "targeting.similar_to[1]"),
    (_with(audience=["Home"]), "targeting.audience"),
    (_with(audience={"categories": ["Home"], "age": 30}), "targeting.audience.age"),
    (_with(audience={"categories": ["Home", " > Garden"]}), "targeting.audience.categories[1]"),
])
def test_parse_errors_name_the_path(obj: Any, field: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        parse_targeting(obj)
    assert e.value.field == field


def test_parse_errors_use_the_given_root() -> None:
    with pytest.raises(InvalidQuery) as e:
        parse_targeting({"keywords": [{"text": "a", "match": "any"}]}, field="body.targeting")
    assert e.value.field == "body.targeting.keywords[0].match"
    assert "exact, phrase, broad" in e.value.message


def test_keyword_rejects_an_unknown_match_type() -> None:
    with pytest.raises(InvalidQuery) as e:
        Keyword("gloves", "fuzzy")  # type: ignore[arg-type]
    assert e.value.field == "match"
