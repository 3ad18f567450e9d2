"""Ad targeting: which campaigns match a request (keywords, categories, similar items, audiences).

Owns the :class:`Targeting` of a campaign, its JSON form (:func:`parse_targeting`, :func:`targeting_to_dict`)
and the matching of a search request against it (:func:`query_matches`). ``similar_to`` (vector neighbours
of items) and ``audience_categories`` (shopper affinities) are only carried here: the caller checks them
with the vectors and the shopper profile.

**Tokens.** :func:`normalize` lowercases (``str.lower``) and splits on every character that is not a Unicode
letter or digit (``[^\\W_]+``: ``\\w`` without the underscore), dropping empties: ``"Nitrile-Gloves (XL)"`` ->
``["nitrile", "gloves", "xl"]``, ``"Café_crème"`` -> ``["café", "crème"]``. No stemming, no stop words.

**Match types** (keyword tokens ``K``, query tokens ``Q``):

- ``exact``: ``Q == K`` (same tokens, same order and count; a plural ``s`` is *not* stripped).
- ``phrase``: ``K`` appears contiguously and in order inside ``Q``.
- ``broad``: every token of ``K`` matches some token of ``Q`` (any order, a query token may serve several),
  where two tokens match if equal or if one is the other plus ``"s"`` or ``"es"`` (a simple plural:
  ``glove``/``gloves``, ``box``/``boxes``).

A keyword or query without tokens matches nothing.

**Categories** are ``"A > B > C"`` paths (separator ``" > "``). A target matches an item's category when its
segments are a prefix of the item's segments, compared case-insensitively (``casefold``) with whitespace
collapsed: ``"Industrial & Scientific > Lab"`` matches ``"industrial & scientific > lab > gloves"`` but not
``"Industrial & Scientific > Laboratory"``.

**JSON** (limits: at most 100 keywords of 1..80 characters with at least one token, 20 category paths of at
most 300 characters, 50 similar item ids of 1..200 characters, 20 audience categories)::

    {"keywords": [{"text": "nitrile gloves", "match": "phrase"}],
     "categories": ["Industrial & Scientific > Lab"], "similar_to": ["item-1"],
     "audience": {"categories": ["Sports & Outdoors"]}}

Every key is optional; ``null`` is no targeting; unknown keys are rejected. Errors are
:class:`~engine.errors.InvalidQuery` naming the exact path, e.g. ``targeting.keywords[1].match``.
:func:`targeting_to_dict` writes only the non-empty parts, so ``parse_targeting(targeting_to_dict(t)) == t``.

**Thread-safety.** Pure functions over frozen values; safe from any thread.

Sources: the match types follow Google Ads and Amazon Sponsored Products keyword match types (exact, phrase,
broad), simplified: no close variants beyond the plural rule above.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any, Literal, cast, get_args

from engine.errors import InvalidQuery

MatchType = Literal["exact", "phrase", "broad"]
MATCH_TYPES: tuple[str, ...] = get_args(MatchType)
MAX_KEYWORDS, MAX_KEYWORD_CHARS = 100, 80
MAX_CATEGORIES, MAX_CATEGORY_CHARS = 20, 300
MAX_SIMILAR, MAX_ITEM_ID_CHARS = 50, 200
MAX_AUDIENCE_CATEGORIES = 20
CATEGORY_SEPARATOR = " > "
_TOKEN = re.compile(r"[^\W_]+")


def normalize(text: str) -> list[str]:
    """Lowercased tokens of ``text``: maximal runs of Unicode letters and digits."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Keyword:
    """A keyword and its match type; ``tokens`` (derived, not compared) is ``normalize(text)``."""

    text: str
    match: MatchType
    tokens: tuple[str, ...] = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidQuery("text", f"must be a string, got {type(self.text).__name__}")
        if self.match not in MATCH_TYPES:
            raise InvalidQuery("match", f"must be one of {', '.join(MATCH_TYPES)}, got {self.match!r}")
        object.__setattr__(self, "tokens", tuple(normalize(self.text)))


def _plural_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return long in (short + "s", short + "es")


def keyword_matches(keyword: Keyword, query: str) -> bool:
    """Whether ``query`` matches ``keyword`` under its match type (see the module docstring)."""
    k, q = keyword.tokens, normalize(query)
    if not k or not q:
        return False
    if keyword.match == "exact":
        return tuple(q) == k
    if keyword.match == "phrase":
        n = len(k)
        return any(tuple(q[i:i + n]) == k for i in range(len(q) - n + 1))
    return all(any(_plural_equal(kt, qt) for qt in q) for kt in k)


def category_segments(path: str) -> tuple[str, ...]:
    """A category path split at ``>`` into casefolded, whitespace-collapsed segments (empties kept)."""
    return tuple(" ".join(s.split()).casefold() for s in path.split(">"))


def category_matches(targets: Sequence[str], item_category: str) -> bool:
    """Whether any target path is the item's category path or a prefix of it at segment boundaries."""
    if not item_category.strip():
        return False
    item = category_segments(item_category)
    for target in targets:
        segs = category_segments(target)
        if target.strip() and len(segs) <= len(item) and item[:len(segs)] == segs:
            return True
    return False


@dataclass(frozen=True)
class Targeting:
    """A campaign's targeting; see the module docstring for each part."""

    keywords: tuple[Keyword, ...] = ()
    categories: tuple[str, ...] = ()
    similar_to: tuple[str, ...] = ()
    audience_categories: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing is targeted at all."""
        return not (self.keywords or self.categories or self.similar_to or self.audience_categories)


def _object(obj: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidQuery(path, f"must be an object, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise InvalidQuery(f"{path}.{key}", f"unknown key; expected one of {', '.join(allowed)}")
    return cast(Mapping[str, Any], obj)


def _list(obj: Any, path: str, limit: int) -> list[Any]:
    if obj is None:
        return []
    if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
        raise InvalidQuery(path, f"must be a list, got {type(obj).__name__}")
    if len(obj) > limit:
        raise InvalidQuery(path, f"at most {limit} entries, got {len(obj)}")
    return list(obj)


def _string(obj: Any, path: str, limit: int) -> str:
    if not isinstance(obj, str):
        raise InvalidQuery(path, f"must be a string, got {type(obj).__name__}")
    text = obj.strip()
    if not 1 <= len(text) <= limit:
        raise InvalidQuery(path, f"must be 1 to {limit} characters, got {len(text)}")
    return text


def _category(obj: Any, path: str) -> str:
    text = _string(obj, path, MAX_CATEGORY_CHARS)
    if any(not s for s in category_segments(text)):
        raise InvalidQuery(path, f"must be a category path like 'A > B', without empty segments: {text!r}")
    return text


def _keyword(obj: Any, path: str) -> Keyword:
    o = _object(obj, path, ("text", "match"))
    for key in ("text", "match"):
        if key not in o:
            raise InvalidQuery(f"{path}.{key}", "is required")
    text = _string(o["text"], f"{path}.text", MAX_KEYWORD_CHARS)
    if not normalize(text):
        raise InvalidQuery(f"{path}.text", "must contain at least one letter or digit")
    if o["match"] not in MATCH_TYPES:
        raise InvalidQuery(f"{path}.match", f"must be one of {', '.join(MATCH_TYPES)}, got {o['match']!r}")
    return Keyword(text, cast(MatchType, o["match"]))


def parse_targeting(obj: Any, field: str = "targeting") -> Targeting:
    """A :class:`Targeting` from its JSON form, validated; errors name the path under ``field``."""
    if obj is None:
        return Targeting()
    o = _object(obj, field, ("keywords", "categories", "similar_to", "audience"))
    kp, cp, sp = f"{field}.keywords", f"{field}.categories", f"{field}.similar_to"
    keywords = tuple(_keyword(k, f"{kp}[{i}]") for i, k in enumerate(_list(o.get("keywords"), kp, MAX_KEYWORDS)))
    categories = tuple(_category(c, f"{cp}[{i}]") for i, c in enumerate(_list(o.get("categories"), cp,
                                                                              MAX_CATEGORIES)))
    similar = tuple(_string(s, f"{sp}[{i}]", MAX_ITEM_ID_CHARS)
                    for i, s in enumerate(_list(o.get("similar_to"), sp, MAX_SIMILAR)))
    audience: tuple[str, ...] = ()
    if o.get("audience") is not None:
        ap = f"{field}.audience"
        a = _object(o["audience"], ap, ("categories",))
        acp = f"{ap}.categories"
        audience = tuple(_category(c, f"{acp}[{i}]")
                         for i, c in enumerate(_list(a.get("categories"), acp, MAX_AUDIENCE_CATEGORIES)))
    return Targeting(keywords, categories, similar, audience)


def targeting_to_dict(t: Targeting) -> dict[str, Any]:
    """The JSON form of ``t`` (the inverse of :func:`parse_targeting`), with only its non-empty parts."""
    out: dict[str, Any] = {}
    if t.keywords:
        out["keywords"] = [{"text": k.text, "match": k.match} for k in t.keywords]
    if t.categories:
        out["categories"] = list(t.categories)
    if t.similar_to:
        out["similar_to"] = list(t.similar_to)
    if t.audience_categories:
        out["audience"] = {"categories": list(t.audience_categories)}
    return out


def query_matches(t: Targeting, query: str, query_category: str | None) -> bool:
    """Whether a search request matches: any keyword matches ``query``, or a target category matches
    ``query_category`` (the category filter or the top organic result's category, from the caller).
    Empty targeting matches nothing here; what an untargeted campaign does is the caller's choice."""
    if any(keyword_matches(k, query) for k in t.keywords):
        return True
    return query_category is not None and category_matches(t.categories, query_category)
