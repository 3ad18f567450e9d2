"""Bad input never gets a 500 (issue 8): each case a probe found answers a 4xx JSON error naming the field.

Flask test client over a real engine and fixture index; the request line and header limits are gunicorn's,
so those run against a real server.
"""
from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.errors import InvalidQuery
from engine.events import InvalidEvent, validate_event
from engine.events.model import text_problem
from tests.conftest import ADMIN_KEY, INGEST_KEY, start_server, stop_server
from web.body import MAX_DEPTH, too_deep
from web.params import MAX_INT, get_bool, get_float, get_int, get_str

INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NOW = 1_700_000_000.0
HUGE = "9" * 400  # float(int(HUGE)) raises OverflowError
JSON_ROUTES = [("/v1/recommendations", {}), ("/v1/events", INGEST), ("/v1/admin/rebuild", ADMIN)]


def post_raw(client: Any, path: str, text: str | bytes, headers: dict[str, str] | None = None) -> Any:
    """POST ``text`` as it is: json.dumps cannot write 1e400, NaN or a lone surrogate's escape on purpose."""
    return client.post(path, data=text, content_type="application/json", headers=headers or {})


def error_of(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    err: dict[str, Any] = resp.get_json()["error"]
    assert err["message"] and err["code"]
    return err


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": "u1", "type": "view", "item_id": "goggles", **fields}


def rejected_fields(resp: Any) -> dict[str, str]:
    """{event_id or "#index": field} of the events the batch rejected."""
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return {r["event_id"] or f"#{r['index']}": r["field"] for r in resp.get_json()["rejected"]}


# 1. Nesting ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, depth", [
    (b"[]", 1), (b"{}", 1), (b'{"a": [{"b": []}]}', 4), (b"[1, [2, [3]]]", 3),
    (b'["' + b"[" * 100 + b'"]', 1),  # brackets inside a string do not nest
    (b'["\\"' + b"[" * 100 + b'"]', 1),  # nor after an escaped quote
    (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the quote
    (b'"' + b"[" * 100, 0),  # an unterminated string runs to the end
    (b"]" + b"[" * 100, 0),  # json.loads stops at the first stray close
    (b"[" * 100, 100),
])
def test_depth_scan(text: bytes, depth: int) -> None:
    assert not too_deep(text, depth)
    assert depth == 0 or too_deep(text, depth - 1)


@pytest.mark.parametrize("path, headers", JSON_ROUTES)
@pytest.mark.parametrize("text", ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000,
                                  '{"items": ' + "[" * 100_000])
def test_deep_json_is_a_400_naming_body(client: Any, path: str, headers: dict[str, str], text: str) -> None:
    err = error_of(post_raw(client, path, text, headers))
    assert err["field"] == "body" and "nested deeper" in err["message"]


def test_nesting_up_to_the_limit_is_read(client: Any) -> None:
    def body(depth: int) -> str:  # the object is one level, the lists the rest
        return '{"items": ["goggles"], "k": 3, "note": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    assert post_raw(client, "/v1/recommendations", body(MAX_DEPTH)).status_code == 200
    assert error_of(post_raw(client, "/v1/recommendations", body(MAX_DEPTH + 1)))["field"] == "body"
    in_a_string = '{"items": ["goggles"], "note": "' + "[{" * 1000 + '"}'
    assert post_raw(client, "/v1/recommendations", in_a_string).status_code == 200


@pytest.mark.parametrize("path, headers", JSON_ROUTES)
@pytest.mark.parametrize("text", [b"{not json", b'{"a": 1} x', b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}',
                                  b"[" + b"1" * 5000 + b"]", b" "])
def test_unreadable_bodies_name_the_body(client: Any, path: str, headers: dict[str, str], text: bytes) -> None:
    assert error_of(post_raw(client, path, text, headers))["field"] == "body"


@pytest.mark.parametrize("text", ["[]", "0", "false", '""', "null", "[1]", '"catalog"'])
def test_rebuild_body_must_be_an_object(client: Any, text: str) -> None:
    err = error_of(post_raw(client, "/v1/admin/rebuild", text, ADMIN))
    assert err["field"] == "body"


def test_rebuild_without_a_body_still_rebuilds(client: Any, config: EngineConfig) -> None:
    from engine.pipeline import build_lock

    with build_lock(config.index_dir):  # so that no build starts: getting as far as the lock is enough
        assert error_of(client.post("/v1/admin/rebuild", headers=ADMIN), 409)["code"] == "build_in_progress"


# 2. Numbers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, raw, named", [
    ("k", "1e400", "k"), ("k", "-1e400", "k"), ("k", HUGE, "k"), ("k", "-" + HUGE, "k"), ("k", "2.5", "k"),
    ("k", "true", "k"), ("k", "[3]", "k"), ("k", '{"n": 3}', "k"), ("k", '"many"', "k"),
    ("k", "Infinity", "body"), ("k", "-Infinity", "body"), ("k", "NaN", "body"), ("k", "9" * 5000, "body"),
    ("min_price", HUGE, "min_price"), ("min_price", "1e400", "min_price"), ("max_price", "-" + HUGE, "max_price"),
    ("min_price", "false", "min_price"), ("min_price", '"NaN"', "min_price"), ("diversity", HUGE, "diversity"),
])
def test_json_numbers_must_be_finite_and_sane(client: Any, field: str, raw: str, named: str) -> None:
    text = '{"items": ["goggles"], "%s": %s}' % (field, raw)
    assert error_of(post_raw(client, "/v1/recommendations", text))["field"] == named


@pytest.mark.parametrize("url, field", [
    ("/v1/search?q=filament&k=1e400", "k"),
    ("/v1/search?q=filament&k=" + HUGE, "k"),
    ("/v1/search?q=filament&offset=" + HUGE, "offset"),
    ("/v1/search?q=filament&min_price=" + HUGE, "min_price"),
    ("/v1/search?q=filament&max_price=inf", "max_price"),
    ("/v1/search?q=filament&personalize=nan", "personalize"),
    ("/v1/suggest?q=fil&k=" + HUGE, "k"),
    ("/v1/items/goggles/similar?k=1e400", "k"),
    ("/v1/users/u1/recommendations?k=1e400", "k"),
    ("/v1/users/u1/recommendations?min_price=" + HUGE, "min_price"),
    ("/v1/admin/stats?days=" + HUGE, "days"),
    ("/v1/admin/stats?days=1e400", "days"),
])
def test_query_numbers_must_be_finite_and_sane(client: Any, url: str, field: str) -> None:
    assert error_of(client.get(url, headers=ADMIN))["field"] == field


def test_number_parameters() -> None:
    assert get_int({"k": "7"}, "k") == 7 and get_int({"k": 7.0}, "k") == 7 and get_int({"k": MAX_INT}, "k") == MAX_INT
    assert get_float({"p": "2.5"}, "p") == 2.5 and get_float({"p": 3}, "p") == 3.0
    for bad in [MAX_INT + 1, -MAX_INT - 1, float("inf"), float("nan"), 1e300, 2.5, True, "1e3", "9" * 5000, [1]]:
        with pytest.raises(InvalidQuery) as info:
            get_int({"k": bad}, "k")
        assert info.value.field == "k"
    for bad in [10**400, float("inf"), float("-inf"), float("nan"), "inf", "1e400", "9" * 400, False, [], {}]:
        with pytest.raises(InvalidQuery) as info:
            get_float({"p": bad}, "p")
        assert info.value.field == "p"
    with pytest.raises(InvalidQuery):
        get_bool({"b": [True]}, "b")


def test_events_with_huge_or_non_finite_numbers_are_rejected_one_by_one(client: Any) -> None:
    good = json.dumps(event("ok1", timestamp=NOW))
    text = "[" + ", ".join([
        good,
        '{"event_id": "v1", "user_id": "u1", "type": "purchase", "item_id": "goggles", "value": %s}' % HUGE,
        '{"event_id": "v2", "user_id": "u1", "type": "rating", "item_id": "goggles", "value": 1e400}',
        '{"event_id": "v3", "user_id": "u1", "type": "view", "item_id": "goggles", "value": -%s}' % HUGE,
        '{"event_id": "t1", "user_id": "u1", "type": "view", "item_id": "goggles", "timestamp": %s}' % HUGE,
        '{"event_id": "t2", "user_id": "u1", "type": "view", "item_id": "goggles", "timestamp": -1e400}',
    ]) + "]"
    resp = post_raw(client, "/v1/events", text, INGEST)
    assert rejected_fields(resp) == {"v1": "value", "v2": "value", "v3": "value", "t1": "timestamp",
                                     "t2": "timestamp"}
    assert resp.get_json()["accepted"] == ["ok1"]
    # NaN and Infinity are not JSON: the whole body is refused, and nothing acknowledged is lost.
    nan = '{"event_id": "n1", "user_id": "u1", "type": "view", "item_id": "goggles", "value": NaN}'
    assert error_of(post_raw(client, "/v1/events", nan, INGEST))["field"] == "body"
    assert error_of(post_raw(client, "/v1/events", "[" * 5000, INGEST))["field"] == "body"
    assert client.get("/v1/users/u1", headers=ADMIN).get_json()["counts"]["view"] == 1


@pytest.mark.parametrize("field, raw", [
    ("value", 10**400), ("value", -(10**400)), ("value", float("inf")), ("value", float("nan")),
    ("timestamp", 10**400), ("timestamp", float("-inf")), ("timestamp", float("nan")),
])
def test_validate_event_refuses_numbers_a_float_cannot_hold(field: str, raw: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_event(event("e", type="purchase", **{field: raw}), now=NOW)
    assert info.value.field == field


# 3. Text ----------------------------------------------------------------------------------------------

def test_text_problem() -> None:
    assert text_problem("plain") is None and text_problem("a\nb") is None
    assert text_problem("emoji \U0001F600 and é") is None
    assert text_problem("a\ud800b") and text_problem("\udfff")
    for control in ["a\nb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b"]:
        assert text_problem(control, controls=False)


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "query"])
def test_lone_surrogates_in_events_are_rejected_naming_the_field(client: Any, field: str) -> None:
    fields = {"event_id": "s1", "user_id": "u1", "type": "view", "item_id": "goggles", "query": "goggles"}
    fields[field] = "PLACEHOLDER"
    text = json.dumps(fields).replace("PLACEHOLDER", "a\\ud800b")
    resp = post_raw(client, "/v1/events", "[%s, %s]" % (text, json.dumps(event("fine"))), INGEST)
    assert [r["field"] for r in resp.get_json()["rejected"]] == [field]
    assert resp.get_json()["accepted"] == ["fine"]  # the rest of the batch is taken


def test_a_surrogate_pair_is_text(client: Any) -> None:
    text = json.dumps(event("pair", user_id="smile \U0001F600"))  # written as the escapes \ud83d\ude00
    assert "\\ud83d\\ude00" in text
    assert post_raw(client, "/v1/events", text, INGEST).get_json()["accepted"] == ["pair"]
    body = '{"items": ["goggles"], "category": "\\ud83d\\ude00"}'
    assert post_raw(client, "/v1/recommendations", body).status_code == 200


@pytest.mark.parametrize("field, text", [
    ("items", '{"items": ["goggles", "\\ud800"]}'),
    ("items", '{"items": "goggles,\\udc80"}'),
    ("exclude", '{"items": ["goggles"], "exclude": ["\\udfff"]}'),
    ("category", '{"items": ["goggles"], "category": "Lab \\ud800"}'),
    ("body", '{"items": ["goggles"], "\\ud800": 1}'),
])
def test_lone_surrogates_in_recommendations_name_the_field(client: Any, field: str, text: str) -> None:
    assert error_of(post_raw(client, "/v1/recommendations", text))["field"] == field


def test_lone_surrogates_in_rebuild_name_the_field(client: Any) -> None:
    assert error_of(post_raw(client, "/v1/admin/rebuild", '{"catalog": "\\ud800.csv"}', ADMIN))["field"] == "catalog"


def test_query_strings_cannot_carry_surrogates(client: Any) -> None:
    # Query strings are bytes read as UTF-8; werkzeug keeps bytes that are not (the encoded surrogate
    # U+D800 here) percent-encoded. A parameter is checked all the same.
    resp = client.get("/v1/search", environ_overrides={"QUERY_STRING": "q=%ED%A0%80"})
    assert resp.status_code == 200 and text_problem(resp.get_json()["query"]) is None
    error_of(client.get("/v1/search", environ_overrides={"QUERY_STRING": "q=x&k=%ED%A0%80"}))
    with pytest.raises(InvalidQuery) as info:
        get_str({"category": "a\ud800"}, "category")
    assert info.value.field == "category"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
@pytest.mark.parametrize("control", ["\n", "\t", "\x00", "\r", "\x1b", "\x7f", "\x85"])
def test_ids_with_control_characters_are_rejected(field: str, control: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_event({**event("e"), field: f"a{control}b"}, now=NOW)
    assert info.value.field == field


def test_every_stored_shopper_can_be_addressed_and_deleted(client: Any) -> None:
    weird = ["a\nb", "tab\there", "nul\x00", "mid\x85dle"]
    batch = [event(f"w{i}", user_id=u) for i, u in enumerate(weird)] + [event("plain", user_id="ü ser/1")]
    resp = client.post("/v1/events", json=batch, headers=INGEST)
    assert resp.get_json()["accepted"] == ["plain"]
    assert set(rejected_fields(resp).values()) == {"user_id"}
    assert client.get("/v1/users/ü ser/1", headers=ADMIN).get_json()["counts"]["view"] == 1
    assert client.delete("/v1/users/ü ser/1", headers=ADMIN).get_json()["deleted_events"] == 1


# 4. 405 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allowed", [
    ("put", "/v1/search", {"GET"}), ("get", "/v1/events", {"POST"}), ("patch", "/v1/recommendations", {"POST"}),
    ("delete", "/v1/admin/rebuild", {"POST"}),
])
def test_405_says_what_is_allowed(client: Any, method: str, path: str, allowed: set[str]) -> None:
    resp = getattr(client, method)(path, headers=ADMIN)
    assert error_of(resp, 405)["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in resp.headers["Allow"].split(",")}


# 5. gunicorn's own refusals ---------------------------------------------------------------------------

def raw_exchange(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes on a fresh connection; the status, headers and body of the answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_oversized_request_lines_and_headers_answer_json(config: EngineConfig) -> None:
    proc, base = start_server(config)
    try:
        cases = [
            (b"GET /v1/search?q=" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "url"),
            (b"GET /v1/search?q=x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n", 431, "headers"),
            (b"GET /v1/search?q=x HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
             + b"\r\n", 431, "headers"),
            (b"GET /v1/search?q=x HTTP/1.1\r\nHost: t\r\nBad Header: 1\r\n\r\n", 400, "headers"),
            (b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "request_line"),
        ]
        for request, status, field in cases:
            got, headers, body = raw_exchange(base, request)
            assert got == status, body
            assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
            err = json.loads(body)["error"]
            assert err["message"] and err["code"] and err.get("field") == field
        # The server is fine afterwards.
        assert raw_exchange(base, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200
    finally:
        stop_server(proc)
