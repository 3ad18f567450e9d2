"""Shopper events: the :class:`Event` record, its types and per-event validation.

:func:`validate_event` turns one JSON-like object into an :class:`Event` or raises
:class:`InvalidEvent` naming the offending field; :func:`validate_many` does a batch and keeps
going, so that a client learns about every bad event at once.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.errors import InvalidQuery
from engine.text import text_problem

MAX_BATCH = 1000
MAX_ID_CHARS = 128
MAX_QUERY_CHARS = 1000
MAX_FUTURE_S = 86400.0  # timestamps more than a day ahead of the server clock are rejected
FIELDS = ("event_id", "user_id", "type", "item_id", "value", "query", "timestamp", "request_id", "position",
          "personalization")
MAX_POSITION = 10_000


class EventType(str, Enum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    SEARCH = "search"
    RATING = "rating"


# Types that are about one item: item_id is required.
ITEM_TYPES = frozenset(t for t in EventType if t is not EventType.SEARCH)
TYPE_NAMES = tuple(t.value for t in EventType)


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event. ``timestamp`` is epoch seconds (UTC); ``seq`` is set once stored."""

    event_id: str
    user_id: str
    type: EventType
    timestamp: float
    item_id: str | None = None
    value: float | None = None
    query: str | None = None
    seq: int | None = None
    # The list the item was shown in (its ``request_id``) and the item's 1-based position there, when the
    # client knows them (the storefront sends both): what attribution joins on.
    request_id: str | None = None
    position: int | None = None
    # The shopper's consent to personalization, when the event carries it (``false``: answers for them are
    # not personalized and no profile is kept; see EventStore.set_consent). Stored as the shopper's consent,
    # not as a column of the event.
    personalization: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``timestamp`` stays epoch seconds, ``type`` its string value."""
        return {
            "event_id": self.event_id, "user_id": self.user_id, "type": self.type.value,
            "item_id": self.item_id, "value": self.value, "query": self.query,
            "timestamp": self.timestamp, "seq": self.seq, "request_id": self.request_id, "position": self.position,
        } | ({} if self.personalization is None else {"personalization": self.personalization})


class InvalidEvent(InvalidQuery):
    """One event is unusable; ``field`` names the field, ``event_id`` is given when it was readable."""

    def __init__(self, field: str, message: str, event_id: str | None = None) -> None:
        super().__init__(field, message)
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """Position ``index`` in the submitted batch, with the reason."""

    index: int
    event_id: str | None
    field: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "field": self.field, "message": self.message}


def validate_event(obj: Mapping[str, Any], *, known_item: Callable[[str], bool] | None = None,
                   now: float) -> Event:
    """Check one event object and return it as an :class:`Event`; raises :class:`InvalidEvent`.

    ``item_id`` is required for every type but ``search``, which requires ``query``; with ``known_item``
    the item must exist. ``value`` is a number: a ``rating`` needs one in 1..5, a ``purchase`` value
    (quantity or price) is optional and >= 0. Timestamps more than a day after ``now`` are refused.

    Ids are strings (integers are accepted and written in decimal), stripped, 1..128 characters, with no
    control characters (so that every shopper can be named in a URL); no string may hold a lone surrogate.
    Unknown fields are rejected so that typos (``"item"`` for ``"item_id"``) do not go unnoticed.
    A timestamp is epoch seconds or an ISO-8601 string (no zone means UTC); missing means ``now``.
    ``query`` (e.g. the search a click came from) and ``value`` are allowed on every type.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEvent("event", f"expected a JSON object, got {type(obj).__name__}")
    event_id = _id(obj, "event_id", None)
    try:
        return _validate(obj, event_id, known_item, now)
    except InvalidEvent as e:
        e.event_id = event_id
        raise


def _validate(obj: Mapping[str, Any], event_id: str, known_item: Callable[[str], bool] | None,
              now: float) -> Event:
    unknown = sorted(k if isinstance(k, str) and text_problem(k) is None else ascii(k)
                     for k in obj if k not in FIELDS)
    if unknown:
        raise InvalidEvent(unknown[0], f"unknown field; allowed: {', '.join(FIELDS)}")
    user_id = _id(obj, "user_id", event_id)
    raw_type = obj.get("type")
    if not isinstance(raw_type, str) or raw_type not in TYPE_NAMES:
        got = "missing" if raw_type is None else repr(raw_type)
        raise InvalidEvent("type", f"must be one of {', '.join(TYPE_NAMES)}; got {got}")
    etype = EventType(raw_type)
    item_id = _id(obj, "item_id", event_id, required=etype in ITEM_TYPES)
    if item_id is not None and known_item is not None and not known_item(item_id):
        raise InvalidEvent("item_id", f"unknown item {item_id!r}")
    query = obj.get("query")
    if query is not None and not isinstance(query, str):
        raise InvalidEvent("query", f"must be a string, got {type(query).__name__}")
    query = query.strip() if query is not None else None
    problem = text_problem(query) if query is not None else None
    if problem:
        raise InvalidEvent("query", problem)
    if etype is EventType.SEARCH and not query:
        raise InvalidEvent("query", "required for a search event")
    if query is not None and len(query) > MAX_QUERY_CHARS:
        raise InvalidEvent("query", f"longer than {MAX_QUERY_CHARS} characters")
    request_id = _id(obj, "request_id", event_id, required=False)
    position = obj.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                 or not 1 <= position <= MAX_POSITION):
        raise InvalidEvent("position", f"must be an integer in 1..{MAX_POSITION} (the item's place in the list)")
    personalization = obj.get("personalization")
    if personalization is not None and not isinstance(personalization, bool):
        raise InvalidEvent("personalization", "must be true or false (the shopper's consent to personalization)")
    return Event(event_id=event_id, user_id=user_id, type=etype, timestamp=_timestamp(obj.get("timestamp"), now),
                 item_id=item_id, value=_value(etype, obj.get("value")), query=query or None,
                 request_id=request_id, position=position, personalization=personalization)


def _id(obj: Mapping[str, Any], field: str, event_id: str | None, required: bool = True) -> Any:
    raw = obj.get(field)
    if raw is None:
        if required:
            raise InvalidEvent(field, "required", event_id)
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InvalidEvent(field, f"must be a string, got {type(raw).__name__}", event_id)
    text = raw.strip()
    if not text:
        raise InvalidEvent(field, "must not be empty", event_id)
    if len(text) > MAX_ID_CHARS:
        raise InvalidEvent(field, f"longer than {MAX_ID_CHARS} characters ({len(text)})", event_id)
    problem = text_problem(text, controls=False)
    if problem:
        raise InvalidEvent(field, problem, event_id)
    return text


def _number(field: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidEvent(field, f"must be a number, got {type(raw).__name__}")
    try:
        value = float(raw)
    except OverflowError:  # an int past the float range (about 1.8e308)
        raise InvalidEvent(field, "must be a finite number, got an integer too large for one") from None
    if not math.isfinite(value):
        raise InvalidEvent(field, f"must be a finite number, got {raw!r}")
    return value


def _value(etype: EventType, raw: Any) -> float | None:
    if raw is None:
        if etype is EventType.RATING:
            raise InvalidEvent("value", "required for a rating event (1..5)")
        return None
    value = _number("value", raw)
    if etype is EventType.RATING and not 1.0 <= value <= 5.0:
        raise InvalidEvent("value", f"a rating must be in 1..5, got {raw!r}")
    if etype is EventType.PURCHASE and value < 0:
        raise InvalidEvent("value", f"a purchase value (quantity or price) must be >= 0, got {raw!r}")
    return value


def parse_timestamp(raw: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string (a naive time is taken as UTC)."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise InvalidEvent("timestamp", f"neither an ISO-8601 time nor epoch seconds (a number): {raw!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        value = when.timestamp()
    else:
        value = _number("timestamp", raw)
    if value < 0:
        raise InvalidEvent("timestamp", f"must be >= 0 (epoch seconds), got {raw!r}")
    return value


def _timestamp(raw: Any, now: float) -> float:
    if raw is None:
        return now
    ts = parse_timestamp(raw)
    if ts > now + MAX_FUTURE_S:
        hint = " (milliseconds? give seconds)" if ts > now * 100 else ""
        raise InvalidEvent("timestamp", f"more than a day in the future{hint}: {raw!r}")
    return ts


def validate_many(objs: Sequence[Any], *, known_item: Callable[[str], bool] | None = None,
                  now: float) -> tuple[list[Event], list[RejectedEvent]]:
    """Validate a batch of at most :data:`MAX_BATCH` events; returns (valid events, rejected ones)."""
    if len(objs) > MAX_BATCH:
        raise InvalidQuery("events", f"at most {MAX_BATCH} events per batch, got {len(objs)}")
    events: list[Event] = []
    rejected: list[RejectedEvent] = []
    for i, obj in enumerate(objs):
        try:
            events.append(validate_event(obj, known_item=known_item, now=now))
        except InvalidEvent as e:
            rejected.append(RejectedEvent(i, e.event_id, e.field, e.message))
    return events, rejected
