"""Impression records: which items a list showed, to whom, at which positions, with the features the ranker
saw, kept in the event store's ``impressions`` table (the learning loop joins outcomes to them).

One record per list served (search, recommendations, similar items, a storefront strip), keyed by the
``request_id`` returned with the list. Positions are 1-based, in ``items`` order; ``offset`` is the rank
of the first item minus one (search paging). ``features`` holds, per shown item, the named features the
ranking used; ``propensities`` the probability the policy gave each shown item, for a stochastic policy only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

IMPRESSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS impressions (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, surface TEXT NOT NULL, "
    "user_id TEXT, query TEXT, items TEXT NOT NULL, offset_ INTEGER NOT NULL, features TEXT, policy TEXT NOT NULL, "
    "propensities TEXT, context TEXT)"
)
IMPRESSION_COLS = "request_id, ts, surface, user_id, query, items, offset_, features, policy, propensities, context"


@dataclass(frozen=True)
class Impression:
    request_id: str
    ts: float
    surface: str  # search, recommend, recommend_session, similar (a storefront strip says which)
    user_id: str | None  # the shopper, or the storefront session's anonymous id; None when nobody
    query: str | None
    items: list[str]
    offset: int = 0
    features: list[dict[str, float | None]] = field(default_factory=list)  # one per shown item
    policy: str = ""  # the ranking that made the list: "hybrid/zscore", "blend", a model version...
    propensities: list[float] | None = None
    # What a policy choosing among strategies saw and chose (engine.learn.online): {"arm", "p", "context"}
    context: dict[str, Any] | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.request_id, self.ts, self.surface, self.user_id, self.query, json.dumps(self.items),
                self.offset, json.dumps(self.features) if self.features else None, self.policy,
                None if self.propensities is None else json.dumps(self.propensities),
                None if self.context is None else json.dumps(self.context))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Impression:
        request_id, ts, surface, user_id, query, items, offset, feats, policy, props, context = row
        return cls(request_id, ts, surface, user_id, query, json.loads(items), offset,
                   json.loads(feats) if feats else [], policy, None if props is None else json.loads(props),
                   None if context is None else json.loads(context))

    def to_json(self, **extra: Any) -> str:
        """One JSON object; ``extra`` keys ride along (a spool line's deferred-feature spec)."""
        return json.dumps({"request_id": self.request_id, "ts": self.ts, "surface": self.surface,
                           "user_id": self.user_id, "query": self.query, "items": self.items, "offset": self.offset,
                           "features": self.features, "policy": self.policy, "propensities": self.propensities,
                           "context": self.context, **extra})

    @classmethod
    def from_json(cls, text: str) -> Impression:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Impression:
        return cls(d["request_id"], d["ts"], d["surface"], d["user_id"], d["query"], d["items"], d["offset"],
                   d["features"], d["policy"], d["propensities"], d.get("context"))
