"""Type-ahead suggestions for a search box: category names and item titles that match what was typed.

Entries. Every category path prefix of the catalog (grouped case-insensitively, like the search
filter) gives one entry: its text is the last segment ("Filament"), ``category`` the full path and
``count`` the number of items under it. Every item gives one entry: its title, ``id`` and category.

Matching. Text is folded (NFKD, accents dropped, case-folded) and split into words (runs of letters
and digits). A query ``q1 .. qn`` matches an entry when each of ``q1 .. q(n-1)`` equals a word of
the entry and ``qn`` is a prefix of one; a query that ends in a space or punctuation has no prefix
word (its last word must be whole too). A query word of 4+ characters may be one edit away, one of
8+ two (insertion, deletion, substitution or transposition of neighbours: the optimal string alignment
distance); for the prefix word, from some prefix of an entry's word. Typos are looked for only in
words without digits ("1.75mm", "m3" must be typed as they are) and only among vocabulary words with
the same first letter.

Ranking. By the total number of edits (exact and prefix matches first); then categories before items,
categories with more items first, shorter texts first, then by folded text and id. Entries with the
same folded text are shown once: the best-ranked one.

Index (built once per snapshot version; immutable, so any number of threads may query it):

- the sorted vocabulary of folded words: a whole word is a bisect, a prefix a contiguous range;
- entries are numbered in rank order, so "better" is "smaller id". For each word the ids of the
  entries holding it (CSR, ascending), the first ``MAX_K`` of them again (the "heads"), and for
  each entry its word ids;
- the vocabulary as a matrix of code points (``MAX_WORD`` columns, zero-padded).

A one-word query reads the heads of its prefix range, which hold its ``k`` best exact matches. A
longer query takes the entries of its most selective word and checks the other words through each
entry's word ids against a per-query cost table over the vocabulary, in rank order, stopping at ``k``
exact matches. Only when exact matches are fewer than ``k`` are typos looked for: an edit-distance
computation vectorised with numpy over the same-first-letter block of the vocabulary (one array
step per query character, over all candidate words and columns at once). A SymSpell deletion index
was the other choice; for prefixes it would have to hold the deletions of every prefix of every word.
"""
from __future__ import annotations

import bisect
import re
from array import array
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.catalog import CATEGORY_SEP, Product
from engine.catalog import category_key

MAX_K = 20
DEFAULT_K = 8
MAX_QUERY_CHARS = 100
MAX_WORD = 24  # code-point columns kept per vocabulary word; longer query words get no typo tolerance
_WORD = re.compile(r"[^\W_]+")
_NO_MATCH = 255
_FIRST_CHUNK = 256  # candidates checked first; each further chunk is 4 times larger


def fold(text: str) -> str:
    """Lower-case, accent-free form used for matching: NFKD, combining marks dropped, casefold."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def typo_budget(word: str) -> int:
    """Edits allowed for a query word: 0 under 4 characters or with a digit, 1 from 4, 2 from 8."""
    if len(word) < 4 or len(word) > MAX_WORD or any(ch.isdigit() for ch in word):
        return 0
    return 1 if len(word) < 8 else 2


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str  # "category" | "item"
    text: str
    id: str | None
    category: str
    count: int | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "kind": self.kind}
        if self.kind == "item":
            out["id"] = self.id
        out["category"] = self.category
        if self.kind == "category":
            out["count"] = self.count
        return out


class Suggester:
    """Suggestions over one catalog. Build with :meth:`from_products`; :meth:`suggest` is thread-safe."""

    def __init__(self, entries: list[_Entry], words: np.ndarray, lengths: np.ndarray, first_seen: list[str]) -> None:
        """``entries`` in rank order, without duplicates; entry i holds the ``lengths[i]`` words that
        follow in ``words``, as ids into ``first_seen`` (the folded words, numbered as first seen)."""
        self.entries = entries
        self.vocab: list[str] = sorted(first_seen)
        position = {w: i for i, w in enumerate(self.vocab)}
        renumber = np.fromiter((position[w] for w in first_seen), np.int32, len(first_seen))
        del position
        words = renumber[words]
        owners = np.repeat(np.arange(len(entries), dtype=np.int32), lengths)
        order = np.lexsort((owners, words))  # by word, then entry (rank)
        words, owners = words[order], owners[order]
        first = np.concatenate(([True], (words[1:] != words[:-1]) | (owners[1:] != owners[:-1])))[: len(words)]
        by_word, self._post = words[first], owners[first]
        self._post_ptr = np.searchsorted(by_word, np.arange(len(self.vocab) + 1)).astype(np.int64)
        order = np.lexsort((by_word, self._post))  # by entry, then word
        self._entry_words = by_word[order]
        self._entry_ptr = np.searchsorted(self._post[order], np.arange(len(entries) + 1)).astype(np.int64)
        pos = np.arange(len(by_word)) - self._post_ptr[by_word]
        head = pos < MAX_K
        self._heads = self._post[head]
        self._heads_ptr = np.searchsorted(by_word[head], np.arange(len(self.vocab) + 1)).astype(np.int64)
        self._codes = np.zeros((len(self.vocab), MAX_WORD), np.int32)
        self._lengths = np.fromiter((len(w) for w in self.vocab), np.int32, len(self.vocab))
        # _letters[i, j]: the letters of the first j + 1 characters of word i, as in _letter_bits
        self._letters = np.zeros((len(self.vocab), MAX_WORD), np.uint64)
        for i, w in enumerate(self.vocab):
            cut = w[:MAX_WORD]
            self._codes[i, : len(cut)] = [ord(c) for c in cut]
        bits = np.left_shift(np.uint64(1), (self._codes % 64).astype(np.uint64))
        bits[self._codes == 0] = 0
        np.bitwise_or.accumulate(bits, axis=1, out=self._letters)

    @classmethod
    def from_products(cls, products: Iterable[Product]) -> Suggester:
        """Entries from a catalog: every category path prefix and every title, ranked and de-duplicated."""
        cats: dict[str, list[Any]] = {}  # category_key of each path prefix -> [segments, items]
        keys: dict[tuple[str, ...], list[str]] = {}  # a product's category -> its prefixes' keys
        items: list[_Entry] = []
        paths: dict[tuple[str, ...], str] = {}  # one shared string per category path
        for p in products:
            prefixes = keys.get(p.category)
            if prefixes is None:
                prefixes = keys[p.category] = [category_key(p.category[:d]) for d in range(1, len(p.category) + 1)]
                paths[p.category] = p.category_path
            for depth, key in enumerate(prefixes, 1):
                slot = cats.get(key)
                if slot is None:
                    cats[key] = [p.category[:depth], 1]
                else:
                    slot[1] += 1
            items.append(_Entry("item", p.title, p.id, paths[p.category], None))
        entries = [_Entry("category", path[-1], None, CATEGORY_SEP.join(path), n) for path, n in cats.values()]
        entries += items
        del items, keys
        folded = [" ".join(fold(e.text).split()) for e in entries]

        def rank(i: int) -> tuple[bool, int, int, str, str]:
            e = entries[i]
            return (e.kind != "category", -(e.count or 0), len(e.text), folded[i], e.id or e.category)

        # Words go straight to ids (no list of strings per entry): the build's peak memory is what a
        # server worker keeps as RSS afterwards.
        kept: list[_Entry] = []
        word_id: dict[str, int] = {}
        flat, lengths = array("i"), array("i")
        seen: set[str] = set()
        for i in sorted(range(len(entries)), key=rank):
            if folded[i] in seen:
                continue
            before = len(flat)
            flat.extend(word_id.setdefault(w, len(word_id)) for w in _WORD.findall(folded[i]))
            if len(flat) == before:
                continue
            seen.add(folded[i])
            kept.append(entries[i])
            lengths.append(len(flat) - before)
        del entries, folded, seen
        return cls(kept, np.frombuffer(flat, np.int32).copy(), np.frombuffer(lengths, np.int32).copy(), list(word_id))

    def __len__(self) -> int:
        return len(self.entries)

    # -- queries --------------------------------------------------------------------------------
    def suggest(self, q: str, k: int = DEFAULT_K) -> list[dict[str, Any]]:
        """Up to ``k`` suggestions for the typed text ``q``, best first (see the module docstring)."""
        folded = fold(q)
        words = _WORD.findall(folded)
        if not words or k < 1:
            return []
        prefix = [i == len(words) - 1 and bool(_WORD.match(folded[-1])) for i in range(len(words))]
        spans = [self._range(w, p) for w, p in zip(words, prefix)]
        none = (np.empty(0, np.int64), np.empty(0, np.uint8))
        if len(words) == 1 and k <= MAX_K:
            lo, hi = spans[0]
            ids = _union(self._heads[self._heads_ptr[lo] : self._heads_ptr[hi]])[:k]
        else:
            ids = self._best(spans, [none] * len(words), k, -1)
        if len(ids) < k and any(typo_budget(w) for w in words):
            near = [self._near(w, typo_budget(w), p) for w, p in zip(words, prefix)]
            ids = self._best(spans, near, k, int(ids.max()) if len(ids) else -1)
        return [self.entries[i].to_dict() for i in ids]

    def _range(self, word: str, prefix: bool) -> tuple[int, int]:
        """Vocabulary ids ``[lo, hi)`` of the words equal to ``word`` (starting with it when ``prefix``)."""
        lo = bisect.bisect_left(self.vocab, word)
        if not prefix:
            return (lo, lo + 1) if lo < len(self.vocab) and self.vocab[lo] == word else (lo, lo)
        if ord(word[-1]) == 0x10FFFF:
            return lo, len(self.vocab)
        return lo, bisect.bisect_left(self.vocab, word[:-1] + chr(ord(word[-1]) + 1), lo)

    def _best(self, spans: list[tuple[int, int]], near: list[tuple[np.ndarray, np.ndarray]], k: int,
              last_exact: int) -> np.ndarray:
        """The first ``k`` entries by (edits, rank) in which every query word i matches: vocabulary ids
        ``spans[i]`` with no edit, ``near[i] = (ids, edits)`` with that many.

        Candidates are the entries of the word with the fewest postings, read in rank order; reading
        stops once ``k`` of them have at most one edit and the rank passed ``last_exact``, the worst
        entry known to match with no edit (when there are typos at all, every exact match is known)."""
        tables: list[np.ndarray] = []
        sources: list[tuple[int, np.ndarray]] = []
        for (lo, hi), (ids, edits) in zip(spans, near):
            t = np.full(len(self.vocab), _NO_MATCH, np.uint8)
            t[ids] = edits
            t[lo:hi] = 0
            tables.append(t)
            extra = ids[(ids < lo) | (ids >= hi)]
            size = self._post_ptr[hi] - self._post_ptr[lo] + (self._post_ptr[extra + 1] - self._post_ptr[extra]).sum()
            sources.append((int(size), extra))
        gen = min(range(len(spans)), key=lambda i: sources[i][0])
        lo, hi = spans[gen]
        extra = sources[gen][1]
        parts = [self._post[self._post_ptr[lo] : self._post_ptr[hi]]]
        parts += [self._post[self._post_ptr[w] : self._post_ptr[w + 1]] for w in extra]
        cand = parts[0] if len(parts) == 1 and hi - lo == 1 else _union(np.concatenate(parts))
        typos = any(len(ids) for ids, _ in near)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        cheap = 0
        start, size = 0, _FIRST_CHUNK
        while start < len(cand):
            chunk = cand[start : start + size]
            start, size = start + size, size * 4
            cost = self._costs(chunk, tables)
            ok = cost < _NO_MATCH
            found.append((chunk[ok], cost[ok]))
            cheap += int(np.count_nonzero(cost[ok] <= (1 if typos else 0)))
            if cheap >= k and chunk[-1] >= last_exact:
                break
        if not found:
            return np.empty(0, np.int32)
        ids = np.concatenate([f[0] for f in found])
        cost = np.concatenate([f[1] for f in found])
        return ids[np.lexsort((ids, cost))][:k]

    def _costs(self, cand: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
        """Total edits of each candidate entry over the query words (``_NO_MATCH`` or more: no match)."""
        starts = self._entry_ptr[cand]
        lens = self._entry_ptr[cand + 1] - starts
        offs = np.cumsum(lens) - lens
        flat = np.arange(int(lens.sum())) - np.repeat(offs - starts, lens)
        wids = self._entry_words[flat]
        total = np.zeros(len(cand), np.int32)
        for t in tables:
            total += np.minimum.reduceat(t[wids], offs)
        return total

    def _near(self, word: str, budget: int, prefix: bool) -> tuple[np.ndarray, np.ndarray]:
        """Vocabulary ids within ``budget`` edits of ``word`` (of a prefix of theirs when ``prefix``) that
        share its first letter, and their distances."""
        empty = np.empty(0, np.int64), np.empty(0, np.uint8)
        if budget == 0:
            return empty
        L = len(word)
        width = min(MAX_WORD, L + budget)
        a, b = self._range(word[0], True)
        lengths = self._lengths[a:b]
        keep = lengths >= L - budget if prefix else (np.abs(lengths - L) <= budget) & (lengths <= width)
        # Each edit takes away at most one of the word's letters: skip words (their first ``width``
        # characters) that lack more than ``budget`` of them (letters hashed to 64 bits).
        qbits = np.uint64(_letter_bits(word))
        keep &= np.bitwise_count(qbits & ~self._letters[a:b, width - 1]) <= budget
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            return empty
        n = len(idx)
        codes = self._codes[a:b][idx, :width]
        q = np.array([ord(c) for c in word], np.int32)
        eq = codes[None, :, :] == q[:, None, None]  # (L, n, width)
        sub = (~eq).astype(np.int16)
        # transposition into cell (i, j), i, j >= 2: q[i-1] == c[j-2] and q[i-2] == c[j-1]
        swap = np.where(eq[1:, :, :-1] & eq[:-1, :, 1:], np.int16(1), np.int16(_NO_MATCH))
        cols = np.arange(width + 1, dtype=np.int16)
        prev2 = prev = np.broadcast_to(cols, (n, width + 1))
        for i in range(1, L + 1):
            row = np.empty((n, width + 1), np.int16)
            row[:, 0] = i
            np.minimum(prev[:, 1:] + 1, prev[:, :-1] + sub[i - 1], out=row[:, 1:])
            if i >= 2 and width >= 2:
                np.minimum(row[:, 2:], prev2[:, :-2] + swap[i - 2], out=row[:, 2:])
            row -= cols  # insertions, left to right: row[j] = min over j' <= j of row[j'] + (j - j')
            np.minimum.accumulate(row, axis=1, out=row)
            row += cols
            prev2, prev = prev, row
        wlen = np.minimum(lengths[idx], width)
        if prefix:
            dist = np.where(cols[None, :] <= wlen[:, None], prev, np.int16(_NO_MATCH)).min(axis=1)
        else:
            dist = prev[np.arange(n), wlen]
        close = dist <= budget
        return (a + idx[close]).astype(np.int64), dist[close].astype(np.uint8)


def _union(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` took 5-10 times longer on these arrays with numpy 2.4)."""
    ids = np.sort(ids)
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


def _letter_bits(text: str) -> int:
    """The set of ``text``'s characters as a 64-bit mask (code point mod 64)."""
    bits = 0
    for ch in text:
        bits |= 1 << (ord(ch) % 64)
    return bits
