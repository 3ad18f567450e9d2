"""Training rows from the impression log: the features each shown item had, labelled by what happened next.

One list per impression of the surface (``search``; ``recommend`` takes ``recommend`` and
``recommend_session`` lists) whose features were logged. Each shown item's label is its strongest
attributed outcome (:mod:`engine.learn.attribution`, by ``request_id`` or the attribution window):
purchase 1.0, add to cart 0.8, click 0.5, nothing 0 (``LABELS``). The ``position`` feature is set from the
item's display position (``offset`` + its place), which the serving side leaves at 0: the model learns the
position effect from the logs without ranking by it (:mod:`engine.ranking.features`). Lists without any
outcome are kept out of training (they say nothing about preference between their items). The newest
``VAL_SHARE`` of the lists (by time) is the validation split for early stopping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engine.events import EventStore, EventType
from engine.learn.attribution import outcomes
from engine.learn.train import list_rows, offsets
from engine.ranking.features import position_feature

LABELS = {EventType.PURCHASE: 1.0, EventType.ADD_TO_CART: 0.8, EventType.CLICK: 0.5}
VAL_SHARE = 0.2
SURFACES = {"recommend": ("recommend", "recommend_session"), "search": ("search",)}


@dataclass
class LoggedRows:
    X: np.ndarray
    y: np.ndarray
    groups: list[int]
    ts: list[float]  # per list
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, val_share: float = VAL_SHARE) -> tuple["LoggedRows", "LoggedRows"]:
        """(train, validation): the oldest lists train, the newest ``val_share`` validate."""
        n_val = max(1, int(round(len(self.groups) * val_share))) if len(self.groups) > 1 else 0
        cut = len(self.groups) - n_val
        rows = int(sum(self.groups[:cut]))
        return (LoggedRows(self.X[:rows], self.y[:rows], self.groups[:cut], self.ts[:cut]),
                LoggedRows(self.X[rows:], self.y[rows:], self.groups[cut:], self.ts[cut:]))

    def lists_where(self, keep: Sequence[bool]) -> "LoggedRows":
        """Only the lists whose ``keep`` is true (one flag per list, in order)."""
        chosen = [i for i, k in enumerate(keep) if k]
        idx = list_rows(self.groups, chosen)
        return LoggedRows(self.X[idx], self.y[idx], [self.groups[i] for i in chosen], [self.ts[i] for i in chosen],
                          dict(self.info))

    def served_with(self, features: Sequence[str], names: Sequence[str]) -> "LoggedRows":
        """Only the lists in which some row has a non-zero value of one of ``names``: the lists served while
        the model making those features existed (a feature logged without it is 0 on every row)."""
        cols = [list(features).index(n) for n in names if n in features]
        off = offsets(self.groups)
        nonzero = (self.X[:, cols] != 0).any(axis=1) if cols else np.ones(len(self.X), bool)
        return self.lists_where([bool(nonzero[off[i]:off[i + 1]].any()) for i in range(len(self.groups))])

    def with_values(self, features: Sequence[str], values: dict[str, float]) -> "LoggedRows":
        """A copy with each named feature set to its value on every row."""
        X = self.X.copy()
        for name, v in values.items():
            X[:, list(features).index(name)] = v
        return LoggedRows(X, self.y, list(self.groups), list(self.ts), dict(self.info))


def logged_rows(store: EventStore, surface: str, features: Sequence[str], *, since: float, until: float | None,
                window_s: float, keep_empty: bool = False) -> LoggedRows:
    """Feature rows and labels of ``surface``'s logged lists in ``[since, until)`` (see the module docstring)."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; expected one of {', '.join(SURFACES)}")
    outs = outcomes(store, since=since, until=until, window_s=window_s)
    col = {name: i for i, name in enumerate(features)}
    X: list[np.ndarray] = []
    y: list[np.ndarray] = []
    groups: list[int] = []
    ts: list[float] = []
    seen = kept = 0
    first = last = None
    for name in SURFACES[surface]:
        for imp in store.impressions(name, since, until):
            seen += 1
            if not imp.features or len(imp.features) != len(imp.items):
                continue
            got = outs.get(imp.request_id, {})
            labels = np.array([max((LABELS.get(t, 0.0) for t in got.get(item, ())), default=0.0)
                               for item in imp.items], np.float32)
            if not keep_empty and not (labels > 0).any():
                continue
            rows = np.zeros((len(imp.items), len(features)), np.float32)
            for i, f in enumerate(imp.features):
                for k, v in f.items():
                    j = col.get(k)
                    if j is not None and v is not None:
                        rows[i, j] = v
                if "position" in col:
                    rows[i, col["position"]] = position_feature(imp.offset + i + 1)
            X.append(rows)
            y.append(labels)
            groups.append(len(imp.items))
            ts.append(imp.ts)
            kept += 1
            first = imp.ts if first is None else min(first, imp.ts)
            last = imp.ts if last is None else max(last, imp.ts)
    order = np.argsort(np.array(ts), kind="stable") if ts else np.empty(0, np.int64)
    X = [X[i] for i in order]
    y = [y[i] for i in order]
    groups = [groups[i] for i in order]
    ts = [ts[i] for i in order]
    width = len(features)
    return LoggedRows(np.concatenate(X) if X else np.zeros((0, width), np.float32),
                      np.concatenate(y) if y else np.zeros(0, np.float32), groups, ts,
                      {"lists_logged": seen, "lists_used": kept, "rows": int(sum(groups)),
                       "span": [first, last], "labels": {t.value: v for t, v in LABELS.items()}})
