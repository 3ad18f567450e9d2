"""Fuzzing every JSON route, and the GET routes' query parameters, with hostile values (hypothesis).

The values: integers past 2**53 and past the float range, numbers that read as infinity (``1e400``, written
as raw JSON text: ``json.dumps`` cannot write them), ``Infinity``/``NaN``, deeply nested arrays and objects,
lone surrogates, control characters and values of the wrong type. Whatever arrives, the answer is never a
5xx, and a 4xx is a JSON error with a message.

Flask test client over a real engine and fixture index. Seeded (``derandomize``), no example database, no
deadline; the file takes a few seconds. ``POST /v1/admin/rebuild`` only gets bodies that must be refused
(a ``catalog`` that is never a path string, or a body that is not an object), and runs with the build lock
held, so that a body that slipped through could not start a build: the test requires a 400.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.config import EngineConfig
from tests.conftest import ADMIN_KEY, INGEST_KEY

INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Hostile values, as raw JSON text ----------------------------------------------------------------------

HUGE_INTS = st.builds(lambda sign, n: f"{sign}{n}", st.sampled_from(["", "-"]), st.integers(2**53 + 1, 10**500))
INFINITE = st.one_of(
    st.builds(lambda sign, exp: f"{sign}1e{exp}", st.sampled_from(["", "-"]), st.integers(309, 100_000)),
    st.sampled_from(["1.7976931348623159e308", "2E308", "-0.0", "1e-400", "9" * 5000]),
)
NOT_JSON_NUMBERS = st.sampled_from(["Infinity", "-Infinity", "NaN", "-NaN", "+1", "0x10", ".5"])


def nested(depth: int, kind: str, closed: bool) -> str:
    inner = "[" * depth if kind == "array" else '{"a": ' * depth
    end = ("]" * depth if kind == "array" else "}" * depth) if closed else ""
    return inner + ("1" if kind == "object" else "") + end


NESTED = st.builds(nested, st.integers(1, 3000), st.sampled_from(["array", "object"]), st.booleans())
ODD_CHARS = st.one_of(st.characters(categories=["Cs"]), st.characters(categories=["Cc"]),
                      st.sampled_from(["\ufffe", "\U0001F600", "\u2028", "é"]))
ODD_STRINGS = st.lists(st.one_of(ODD_CHARS, st.sampled_from(["goggles", "u1", " ", "a"])), min_size=1,
                       max_size=4).map(lambda parts: json.dumps("".join(parts)))  # escapes them: \ud800, \u0000
WRONG_TYPES = st.sampled_from(["[]", "{}", "true", "false", "null", '""', '" "', '"x"', "0", "-1", "1.5", "3",
                               '"goggles"', '["goggles"]', '{"a": 1}', '"1e400"', '"NaN"', '[1, "2", null]'])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
).map(json.dumps)
BAD = st.one_of(HUGE_INTS, INFINITE, NOT_JSON_NUMBERS, NESTED, ODD_STRINGS, WRONG_TYPES, JSON_VALUES)
VALUES = st.one_of(BAD, st.lists(BAD, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"))


def obj(fields: dict[str, str]) -> str:
    """A JSON object from raw JSON value texts."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}"


def fields_of(names: list[str], base: dict[str, str]) -> st.SearchStrategy[str]:
    """Objects: ``base`` with some of ``names`` set to hostile values (and now and then an unknown key)."""
    keys = st.one_of(st.sampled_from(names), st.sampled_from(["extra", "\ud800", ""]))
    return st.builds(lambda bad: obj({**base, **bad}), st.dictionaries(keys, VALUES, max_size=4))


# Routes --------------------------------------------------------------------------------------------

EVENT = {"event_id": '"f1"', "user_id": '"fuzz-user"', "type": '"view"', "item_id": '"goggles"'}
EVENT_FIELDS = ["event_id", "user_id", "type", "item_id", "value", "query", "timestamp"]
EVENTS = fields_of(EVENT_FIELDS, EVENT)
EVENT_BODIES = st.one_of(
    EVENTS,
    st.lists(EVENTS, max_size=4).map(lambda evs: "[" + ", ".join(evs) + "]"),
    st.lists(EVENTS, max_size=4).map(lambda evs: '{"events": [' + ", ".join(evs) + "]}"),
    st.builds(lambda v: obj({"events": v}), VALUES),
    BAD,
)
REC_FIELDS = ["items", "k", "category", "min_price", "max_price", "in_stock", "exclude", "diversity"]
REC_BODIES = st.one_of(fields_of(REC_FIELDS, {"items": '["goggles"]'}), fields_of(REC_FIELDS, {}), BAD)
# Never a valid rebuild: the catalog is not a string (nor null, which means "the current catalog") or holds
# a lone surrogate; or the body is not an object.
NOT_A_PATH = st.one_of(HUGE_INTS, INFINITE, NOT_JSON_NUMBERS, NESTED, WRONG_TYPES.filter(
    lambda v: v not in ("null",) and not v.startswith('"')), st.just('"\\ud800/catalog.jsonl"'))
REBUILD_BODIES = st.one_of(
    st.builds(lambda catalog, rest: obj({**rest, "catalog": catalog}), NOT_A_PATH,
              st.dictionaries(st.sampled_from(["full", "extra"]), VALUES, max_size=2)),
    BAD.filter(lambda text: not text.lstrip().startswith("{")),
)

QUERY_VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"1e400", b"-1e400", b"inf", b"-inf", b"nan", b"NaN", b"Infinity", b"9" * 400, b"9" * 5000,
                     b"-0", b"0", b"1", b"2.5", b"true", b"no", b"", b" ", b"\xed\xa0\x80", b"\xff", b"\x00",
                     b"goggles", b"a\nb", b"%", b"[1]", b"{}"]),
    HUGE_INTS.map(str.encode),
)
GET_ROUTES: dict[str, list[str]] = {
    "/v1/search": ["q", "k", "offset", "category", "min_price", "max_price", "in_stock", "user", "personalize"],
    "/v1/suggest": ["q", "k"],
    "/v1/items/{id}/similar": ["k", "same_category"],
    "/v1/users/{id}/recommendations": ["k", "category", "min_price", "max_price", "in_stock", "exclude",
                                       "diversity"],
    "/v1/users/{id}": ["k"],
    "/v1/items/{id}": ["k"],
    "/v1/admin/stats": ["days"],
    "/v1/admin/rebuild/{id}": ["k"],
}
PATH_IDS = st.one_of(st.sampled_from([b"goggles", b"u1", b"fuzz-user"]), st.binary(min_size=1, max_size=12))


def check(resp: Any) -> None:
    """Never a 5xx; a 4xx is a JSON error with a message."""
    event(f"status {resp.status_code}")  # see --hypothesis-show-statistics
    assert resp.status_code < 500, resp.get_data(as_text=True)
    if resp.status_code >= 400:
        assert resp.is_json, resp.get_data(as_text=True)
        error = resp.get_json()["error"]
        assert isinstance(error["message"], str) and error["message"]


def post(client: Any, path: str, text: str, headers: dict[str, str]) -> Any:
    # surrogatepass: a raw lone surrogate in the body is not UTF-8, which must be a 400 too
    return client.post(path, data=text.encode("utf-8", "surrogatepass"), content_type="application/json",
                       headers=headers)


@FUZZ
@given(text=EVENT_BODIES)
def test_events_fuzz(client: Any, text: str) -> None:
    check(post(client, "/v1/events", text, INGEST))


@FUZZ
@given(text=REC_BODIES)
def test_recommendations_fuzz(client: Any, text: str) -> None:
    check(post(client, "/v1/recommendations", text, {}))


@settings(FUZZ, max_examples=200)
@given(text=REBUILD_BODIES)
def test_rebuild_fuzz(client: Any, config: EngineConfig, text: str) -> None:
    from engine.pipeline import build_lock

    with build_lock(config.index_dir):  # a body that slipped through would get 409, and fail the test
        resp = post(client, "/v1/admin/rebuild", text, ADMIN)
    check(resp)
    assert resp.status_code == 400, resp.get_data(as_text=True)


@settings(FUZZ, max_examples=500)
@given(route=st.sampled_from(sorted(GET_ROUTES)), path_id=PATH_IDS, data=st.data())
def test_query_parameters_fuzz(client: Any, route: str, path_id: bytes, data: st.DataObject) -> None:
    names = GET_ROUTES[route]
    params = data.draw(st.dictionaries(st.sampled_from(names), QUERY_VALUES, max_size=len(names)))
    query = "&".join(f"{name}={quote_from_bytes(value, safe='')}" for name, value in params.items())
    path = route.replace("{id}", quote_from_bytes(path_id, safe=""))
    check(client.get(path, headers=ADMIN, environ_overrides={"QUERY_STRING": query}))
