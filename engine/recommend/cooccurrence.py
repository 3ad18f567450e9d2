"""Item-to-item co-occurrence and transitions from all shoppers' sequences, updated as events arrive.

Counting. For every shopper, each new event ``b`` pairs with each of that shopper's previous
``window`` events ``a`` (``gap`` = how many positions back ``a`` is, 1 = the event just before):

    C[a, b] += distance_decay ** (gap - 1) * sqrt(w_a * w_b)                   (transition a -> b)
    C[b, a] += backward_weight * distance_decay ** (gap - 1) * sqrt(w_a * w_b) (co-occurrence, reversed)

``w`` is the event's weight (1 by default; the caller may weight by event type). An item never pairs
with itself. ``backward_weight`` 0 counts pure forward transitions, 1 symmetric co-occurrence; the
distance decay makes adjacent events count most. Every event also adds ``w`` to the item's ``mass``.

Similarity and scoring. ``S[a, b] = C[a, b] * mass[a] ** -source_exponent * mass[b] ** -target_exponent``;
a shopper with recent items ``h`` (weights ``r_h``, e.g. ``position_decay ** age``) gets
``score(b) = sum_h r_h * S[h, b]``. ``source_exponent`` damps the pull of very popular history items (an
IDF-like factor); ``target_exponent`` penalises popular candidates (the blend adds popularity back as its
own source).

Defaults are the values tuned on Scientific validation (``vitrine eval recommend``): ``window`` 50 (the
whole history there), ``distance_decay`` 0.8, ``backward_weight`` 1.0, ``source_exponent`` 0.25,
``target_exponent`` 0.15, and recency weights ``0.85 ** age`` over the shopper's history.

Storage: ``pairs[a][b] = C[a, b]`` (dict of dicts, keys are any hashable item key), ``mass[a]``, and per
shopper a ring buffer of the last ``window`` (item, weight) events. ``add_event`` is O(window);
``scores`` is O(sum of the history items' neighbour counts). ``to_csr`` exports ``S`` as a scipy CSR
matrix over catalog rows for bulk scoring (``H @ S``), which gives the same numbers.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

Key = Hashable


class CooccurrenceModel:
    """Weighted co-occurrence counts; see the module docstring for the exact update and score rules."""

    def __init__(self, *, window: int = 50, distance_decay: float = 0.8, backward_weight: float = 1.0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 < distance_decay <= 1.0:
            raise ValueError(f"distance_decay must be in (0, 1], got {distance_decay}")
        if backward_weight < 0.0:
            raise ValueError(f"backward_weight must be >= 0, got {backward_weight}")
        self.window = int(window)
        self.distance_decay = float(distance_decay)
        self.backward_weight = float(backward_weight)
        self.pairs: dict[Key, dict[Key, float]] = {}
        self.mass: dict[Key, float] = {}
        self.n_events = 0
        self._recent: dict[Key, deque[tuple[Key, float]]] = {}

    # -- updates ------------------------------------------------------------------------------------

    def add_event(self, user: Key, item: Key, weight: float = 1.0) -> None:
        """One event of ``user`` on ``item``: pairs it with the user's last ``window`` events. O(window)."""
        recent = self._recent.get(user)
        if recent is None:
            recent = self._recent[user] = deque(maxlen=self.window)
        self._add(recent, item, float(weight))

    def add_sequence(self, items: Sequence[Key], weights: Sequence[float] | None = None) -> None:
        """A whole ordered sequence of one shopper (oldest first), not remembered for later events."""
        recent: deque[tuple[Key, float]] = deque(maxlen=self.window)
        for pos, item in enumerate(items):
            self._add(recent, item, 1.0 if weights is None else float(weights[pos]))

    def add_sequences(self, sequences: Iterable[Sequence[Key]]) -> None:
        """Many unweighted sequences at once: the same counts as ``add_sequence`` on each, vectorised."""
        seqs = [list(s) for s in sequences]
        lengths = np.array([len(s) for s in seqs], np.int64)
        if lengths.sum() == 0:
            return
        flat: list[Key] = [x for s in seqs for x in s]
        vocab: dict[Key, int] = {}
        codes = np.fromiter((vocab.setdefault(x, len(vocab)) for x in flat), np.int64, len(flat))
        keys = list(vocab)
        sid = np.repeat(np.arange(len(seqs)), lengths)
        rows, cols, vals = [], [], []
        for gap in range(1, min(self.window, int(lengths.max()) - 1) + 1):
            a, b = codes[:-gap], codes[gap:]
            keep = (sid[:-gap] == sid[gap:]) & (a != b)
            if not keep.any():
                continue
            w = np.full(int(keep.sum()), self.distance_decay ** (gap - 1))
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
            vals += [w, w * self.backward_weight]
        m = len(keys)
        if rows:
            coo = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
            csr = coo.tocsr()
            csr.sum_duplicates()
            csr.eliminate_zeros()
            indptr, indices, data = csr.indptr, csr.indices, csr.data
            for i in range(m):
                lo, hi = indptr[i], indptr[i + 1]
                if lo == hi:
                    continue
                row = self.pairs.setdefault(keys[i], {})
                for j, v in zip(indices[lo:hi].tolist(), data[lo:hi].tolist()):
                    row[keys[j]] = row.get(keys[j], 0.0) + v
        counts = np.bincount(codes, minlength=m)
        for i, c in enumerate(counts.tolist()):
            self.mass[keys[i]] = self.mass.get(keys[i], 0.0) + float(c)
        self.n_events += int(lengths.sum())

    def forget_user(self, user: Key) -> None:
        """Drop a shopper's ring buffer (their past pairs stay counted)."""
        self._recent.pop(user, None)

    def _add(self, recent: deque[tuple[Key, float]], item: Key, weight: float) -> None:
        factor = 1.0
        for prev, w_prev in reversed(recent):
            if prev != item:
                pw = factor * math.sqrt(w_prev * weight)
                if pw:
                    fwd = self.pairs.setdefault(prev, {})
                    fwd[item] = fwd.get(item, 0.0) + pw
                    if self.backward_weight:
                        back = self.pairs.setdefault(item, {})
                        back[prev] = back.get(prev, 0.0) + pw * self.backward_weight
            factor *= self.distance_decay
        recent.append((item, weight))
        self.mass[item] = self.mass.get(item, 0.0) + weight
        self.n_events += 1

    # -- reading ------------------------------------------------------------------------------------

    def count(self, a: Key, b: Key) -> float:
        """``C[a, b]``: weighted count of ``b`` after ``a`` (plus the backward share of ``b`` before ``a``)."""
        return self.pairs.get(a, {}).get(b, 0.0)

    def scores(
        self,
        history: Sequence[tuple[Key, float]],
        *,
        source_exponent: float = 0.25,
        target_exponent: float = 0.15,
    ) -> dict[Key, tuple[float, Key]]:
        """``{candidate: (score, history item contributing most)}`` for ``(item, recency weight)`` pairs."""
        out: dict[Key, list[Any]] = {}  # candidate -> [score, history item contributing most, its part]
        for h, rh in history:
            row = self.pairs.get(h)
            if not row or not rh:
                continue
            f = rh * self.mass[h] ** -source_exponent
            for j, c in row.items():
                v = f * c * (self.mass[j] ** -target_exponent if target_exponent else 1.0)
                cur = out.get(j)
                if cur is None:
                    out[j] = [v, h, v]
                else:
                    cur[0] += v
                    if v > cur[2]:
                        cur[1], cur[2] = h, v
        return {j: (s, h) for j, (s, h, _) in out.items()}

    def scores_of(self, item: Key, candidates: Sequence[Key], *, source_exponent: float = 0.25,
                  target_exponent: float = 0.15) -> np.ndarray:
        """``scores([(item, 1.0)])`` of ``candidates`` only, ``(len,)`` float64 (0 for no pair): the same
        values, without walking ``item``'s other neighbours (the ranker's features of a few items)."""
        out = np.zeros(len(candidates), np.float64)
        row = self.pairs.get(item)
        if not row:
            return out
        f = self.mass[item] ** -source_exponent
        for i, j in enumerate(candidates):
            c = row.get(j)
            if c is not None:
                out[i] = f * c * (self.mass[j] ** -target_exponent if target_exponent else 1.0)
        return out

    def scores_dense(
        self,
        history: Sequence[tuple[Key, float]],
        rows: Mapping[Any, int],
        n: int,
        *,
        source_exponent: float = 0.25,
        target_exponent: float = 0.15,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores over catalog rows ``(n,)`` float32 and, per row, the catalog row of the history item
        contributing most (``-1`` where the score is 0 or that item is not in the catalog)."""
        scores = np.zeros(n, np.float32)
        because = np.full(n, -1, np.int64)
        for j, (s, h) in self.scores(history, source_exponent=source_exponent, target_exponent=target_exponent).items():
            r = rows.get(j)
            if r is not None:
                scores[r] = s
                because[r] = rows.get(h, -1)
        return scores, because

    def count_csr(self, rows: Mapping[Any, int], n: int) -> sp.csr_matrix:
        """The raw counts ``C`` as an ``(n, n)`` float64 CSR matrix over catalog rows (keys without a row
        are left out)."""
        r_idx: list[int] = []
        c_idx: list[int] = []
        vals: list[float] = []
        for a, row in self.pairs.items():
            ra = rows.get(a)
            if ra is None:
                continue
            cols = [rows.get(b, -1) for b in row]
            r_idx += [ra] * len(cols)
            c_idx += cols
            vals += list(row.values())
        c = np.array(c_idx, np.int64)
        keep = c >= 0
        return sp.csr_matrix((np.array(vals, np.float64)[keep], (np.array(r_idx, np.int64)[keep], c[keep])),
                             shape=(n, n))

    def to_csr(
        self, rows: Mapping[Any, int], n: int, *, source_exponent: float = 0.25, target_exponent: float = 0.15,
        counts: sp.csr_matrix | None = None,
    ) -> sp.csr_matrix:
        """The similarity ``S`` as an ``(n, n)`` float32 CSR matrix over catalog rows, so that ``H @ S`` scores
        many shoppers at once (``H``: shoppers x rows recency weights). ``counts``: a ``count_csr`` to reuse."""
        c = self.count_csr(rows, n) if counts is None else counts
        mass = np.maximum(self.mass_array(rows, n), 1e-300)
        left = sp.diags(mass ** -source_exponent)
        right = sp.diags(mass ** -target_exponent)
        return sp.csr_matrix(left @ c @ right, dtype=np.float32)

    def mass_array(self, rows: Mapping[Any, int], n: int) -> np.ndarray:
        """``mass`` over catalog rows, ``(n,)`` float64 (0 for items never seen)."""
        out = np.zeros(n, np.float64)
        for k, m in self.mass.items():
            r = rows.get(k)
            if r is not None:
                out[r] = m
        return out

    def __len__(self) -> int:
        """Number of stored (a, b) pairs."""
        return sum(len(r) for r in self.pairs.values())
