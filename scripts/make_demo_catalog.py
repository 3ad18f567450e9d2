"""Build the demo catalog ``data/demo/catalog.jsonl`` from the shared UniSRec "Scientific" items.

Each source row has ``item_id`` (ASIN), ``item_index`` and ``text`` = ``"{title}. {categories}. {brand}. "``,
where the category names were joined with spaces, so the path separators are lost. This script splits the
text back into title, category path and brand, and re-segments the category words into path segments
with boundaries inferred from the whole corpus (see :class:`CategorySegmenter`). Nothing is invented:
there is no price, stock, URL or description in the source, so those stay empty. Output is deterministic
(source order). Usage: ``python scripts/make_demo_catalog.py [SRC] [--out PATH] [--list-paths]``.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.catalog import Catalog, Product, write_catalog_jsonl  # noqa: E402
from engine.text import clean_text  # noqa: E402

DEFAULT_SRC = "../shared/data/amazon_scientific_unisrec/items.csv.gz"
DEFAULT_OUT = "data/demo/catalog.jsonl"
ROOT = ("Industrial", "&", "Scientific")
MARKER = ". " + " ".join(ROOT)
JOINERS = frozenset({"&", "and", "of", "for", "or", "with", "-", "x", "in", "to", "by", "the", "a"})
NOUN_SUFFIXES = ("tion", "sion", "ics", "ment", "ware", "ity", "ness")
BROKEN_TITLE = re.compile(r"Industrial & Scientific\s*/>")
PLACEHOLDER_BRANDS = frozenset({"Unknown"})
Words = tuple[str, ...]


def split_text(text: str) -> tuple[str, Words | None, str]:
    """``(title, category words or None, brand)`` from one UniSRec text ``"title. categories. brand. "``.

    The category part starts with "Industrial & Scientific" when present and is empty (". . ") otherwise;
    titles and brands may contain ". " themselves, so the split anchors on that marker, not on dots.
    """
    body = text[:-2] if text.endswith(". ") else text.rstrip()
    i = body.find(MARKER)
    if i >= 0:
        cats, _, brand = body[i + 2:].partition(". ")
        return body[:i], tuple(cats.split()), brand
    j = text.find(". . ")
    if j >= 0:
        return text[:j], None, text[j + 4:].removesuffix(". ")
    return body, None, ""


def _bare(w: str) -> str:
    return w.lower().strip(",.;:")


def _stem(w: str) -> str:
    b = _bare(w)
    return b[:-1] if _plural(w) else b


def _plural(w: str) -> bool:
    b = _bare(w)
    return len(b) > 3 and b.endswith("s") and not b.endswith(("ss", "us", "is"))


def _blocked(prev: str, nxt: str) -> bool:
    """No segment ends on a joiner or a comma, and none starts with one."""
    return prev.endswith(",") or _bare(prev) in JOINERS or _bare(nxt) in JOINERS or nxt.startswith(("&", ","))


class CategorySegmenter:
    """Recover path segments from space-joined category names, using the whole corpus.

    The word sequences form a trie. Phase 1 decides per trie node (so every item gets the same answer
    for the same prefix) whether a segment ends there:

    - a sequence that is some item's complete category is a category itself (strongest evidence);
    - a plural word followed by anything but "&", "," or "and" ends a name ("Tools" | "Workholding"),
      unless a single last word follows (the compound "Sharps Containers");
    - where the continuations branch, a boundary needs a sign that the words so far form a whole name:
      a child name with the same head noun, a child starting with a word of the name ("Hose" > "Hoses"),
      or a noun ending (-tion, -ics, -ment: "Filtration", "Robotics"); branches are *not* boundaries
      when every word so far repeats the parent's name (siblings sharing a prefix: "Hazardous Storage
      Cans" / "Hazardous Storage Drums" under "Hazardous Storage Equipment") or when all continuations
      are short leaves of a singular modifier ("Motor Contactors", "Motor Drives").

    Phase 2 splits the remaining runs on a repeated word ("Aluminum Aluminum Rods" -> "Aluminum" >
    "Aluminum Rods"; "Patient Skin Prep Skin Prep Solutions"), and phase 3 applies every boundary found
    that way to all sequences through the same trie node. Sequences that end in scraped description
    text (lower-case words) are cut back to their longest prefix that is a known category.
    """

    def __init__(self, paths: Iterable[Words]) -> None:
        seen = set(paths)
        self.junk = {p for p in seen if _junk(p)}
        self.complete = seen - self.junk
        self.children: dict[Words, set[str]] = defaultdict(set)
        for p in self.complete:
            for j in range(len(p)):
                self.children[p[:j]].add(p[j])
        self.end_words = {_bare(p[-1]) for p in self.complete}
        self.rules: Counter[str] = Counter()
        self._counted: set[tuple[Words, str]] = set()
        bounds = {p: self._phase1(p) for p in sorted(self.complete)}
        extra = {p[:a + c] for p, b in bounds.items() for a, z in pairwise(b) for c in self._split(p[a:z])}
        self.rules["repeated word"] = len(extra)
        self._segments: dict[Words, list[str]] = {}
        for p, b in bounds.items():
            cuts = sorted(set(b) | {j for j in range(1, len(p)) if p[:j] in extra})
            self._segments[p] = [" ".join(ROOT)] + [" ".join(p[a:z]) for a, z in pairwise(cuts)]
        for p in self.junk:
            prefixes = [p[:j] for j in range(len(p) - 1, len(ROOT), -1) if p[:j] in self.complete]
            self._segments[p] = self._segments[prefixes[0]] if prefixes else [" ".join(ROOT)]

    def segment(self, words: Words) -> list[str]:
        """Path segments, root first, for a category word sequence given at construction."""
        return list(self._segments[words])

    # phase 1 -------------------------------------------------------------------------------------
    def _chain(self, p: Words) -> tuple[list[str], bool]:
        """Words along the unique continuation of ``p``; True when it stops at a category end."""
        out: list[str] = []
        while True:
            nxt = self.children.get(p, set())
            if len(nxt) != 1:
                return out, not nxt
            w = next(iter(nxt))
            out.append(w)
            p = p + (w,)
            if p in self.complete:
                return out, True

    def _one_word_leaf(self, p: Words) -> bool:
        """True when ``p`` continues only with one final word ("Sharps" + "Containers": a compound)."""
        nxt = self.children.get(p, set())
        return len(nxt) == 1 and not self.children.get(p + (next(iter(nxt)),))

    def _branch_rule(self, p: Words, span: Words, parent: Words) -> str | None:
        last = span[-1]
        if {_stem(w) for w in span} <= {_stem(w) for w in parent}:
            return None
        chains = []
        for w in sorted(self.children[p]):
            rest, ends = self._chain(p + (w,))
            chains.append(([w, *rest], ends or p + (w,) in self.complete))
        if any(ends and _stem(c[-1]) == _stem(last) for c, ends in chains):
            return "child has the same head noun"
        stems = {_stem(w) for w in span if _bare(w) not in JOINERS}
        if any(_stem(c[0]) in stems for c, _ in chains):
            return "child repeats a word of the name"
        if _bare(last).endswith(NOUN_SUFFIXES):
            return "noun ending at a branch"
        if all(ends and len(c) <= 3 for c, ends in chains):
            return None
        if _bare(last) in self.end_words:
            return "word that ends another category"
        return None

    def _phase1(self, path: Words) -> list[int]:
        bounds = [0, len(ROOT)]
        for j in range(len(ROOT) + 1, len(path)):
            prev, p = path[j - 1], path[:j]
            if _blocked(prev, path[j]):
                continue
            if p in self.complete:
                rule: str | None = "complete category"
            elif _plural(prev) and not self._one_word_leaf(p):
                rule = "plural word"
            elif len(self.children[p]) >= 2:
                rule = self._branch_rule(p, path[bounds[-1]:j], path[bounds[-2]:bounds[-1]])
            else:
                rule = None
            if rule:
                self._count(p, rule)
                bounds.append(j)
        return bounds[1:] + [len(path)]

    def _count(self, node: Words, rule: str) -> None:
        key = (node, rule)
        if key not in self._counted:
            self._counted.add(key)
            self.rules[rule] += 1

    # phase 2 -------------------------------------------------------------------------------------
    def _split(self, s: Words) -> list[int]:
        """Cut offsets inside one phase-1 run, at repeated words."""
        cut = self._repeat_cut(s)
        if not cut:
            return []
        return [*self._split(s[:cut]), cut, *(cut + q for q in self._split(s[cut:]))]

    def _repeat_cut(self, s: Words) -> int | None:
        n = len(s)
        for k in range(1, n):
            firsts = [i for i in range(k) if _stem(s[i]) == _stem(s[k])]
            if not firsts:
                continue
            f = firsts[0]
            for p in range(k, f, -1):
                if not _blocked(s[p - 1], s[p]) and _bare(s[p - 1]) in self.end_words:
                    return p
            if _blocked(s[k - 1], s[k]) or (f > 0 and "&" in s[f:k]):
                continue
            r = 1
            while k + r < n and f + r < k and _stem(s[f + r]) == _stem(s[k + r]):
                r += 1
            between = s[f + r:k]
            return f + r if f == 0 and between and _bare(between[0]) not in JOINERS else k
        return None


def _junk(words: Words) -> bool:
    """Scraped description text: lower-case words (not joiners, not "pH"-like) or an absurd length."""
    return len(words) > 40 or any(w.islower() and w not in JOINERS for w in words)


def read_items(src: Path) -> list[dict[str, str]]:
    with gzip.open(src, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def build(rows: list[dict[str, str]]) -> tuple[list[Product], CategorySegmenter, Counter[str]]:
    """Products in source order, the fitted segmenter and counts for the summary."""
    parsed = [(row, *split_text(row["text"])) for row in rows]
    segmenter = CategorySegmenter(words for _, _, words, _ in parsed if words)
    stats: Counter[str] = Counter()
    products = []
    for row, raw_title, words, raw_brand in parsed:
        title, _ = clean_text(raw_title)
        brand, _ = clean_text(raw_brand)
        attributes = {"unisrec_index": row["item_index"]}
        if brand in PLACEHOLDER_BRANDS:
            brand = ""
            stats["placeholder brand 'Unknown' left empty"] += 1
        if words is None:
            category = [" ".join(ROOT)]  # every item comes from the Industrial & Scientific file
            stats["no category in source (root only)"] += 1
        else:
            category = segmenter.segment(words)
            stats["category from source"] += 1
            stats["multi-segment category"] += len(category) > 1
            if " ".join(category).split() != list(words) and words not in segmenter.junk:
                raise RuntimeError(f"segmentation changed the words of {row['item_id']}: {category}")
        if BROKEN_TITLE.fullmatch(title):
            # The source title is an HTML fragment of the scraped page; name the item by what is known.
            title = " ".join(x for x in (brand, category[-1]) if x)
            attributes["title_note"] = "source title was an HTML fragment; derived from brand and category"
            stats["title derived (source title was an HTML fragment)"] += 1
        stats["with brand"] += bool(brand)
        stats["with title"] += bool(title)
        products.append(Product(id=row["item_id"], title=title, category=tuple(category), brand=brand,
                                attributes=attributes))
    return products, segmenter, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC, help="items.csv.gz (relative to the repo root)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output JSON Lines (relative to the repo root)")
    ap.add_argument("--list-paths", action="store_true", help="print every distinct category path with its count")
    args = ap.parse_args(argv)
    src, out = (REPO / args.src).resolve(), (REPO / args.out).resolve()
    rows = read_items(src)
    products, segmenter, stats = build(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_catalog_jsonl(Catalog(products), out)

    paths = Counter(p.category_path for p in products)
    depth = Counter(len(p.category) for p in products)
    top = Counter(p.category[1] for p in products if len(p.category) > 1)
    print(f"read {len(rows)} rows from {src}")
    print(f"wrote {len(products)} products to {out} ({out.stat().st_size / 1e6:.2f} MB)")
    for key in ("with title", "with brand", "category from source", "multi-segment category",
                "no category in source (root only)", "title derived (source title was an HTML fragment)",
                "placeholder brand 'Unknown' left empty"):
        print(f"  {key}: {stats[key]}")
    print(f"  category text ending in scraped description, cut back: {len(segmenter.junk)} distinct")
    print(f"distinct category paths: {len(paths)} (from {len(segmenter.complete)} distinct category texts, "
          f"plus the root alone)")
    print("  depth (segments incl. root): " + ", ".join(f"{d}: {n}" for d, n in sorted(depth.items())))
    print("  segment boundaries by rule: " + ", ".join(f"{k} {v}" for k, v in segmenter.rules.most_common()))
    print(f"  top-level categories ({len(top)}):")
    for name, n in sorted(top.items()):
        print(f"    {n:5d}  {name}")
    if args.list_paths:
        for path, n in sorted(paths.items()):
            print(f"{n:5d}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
