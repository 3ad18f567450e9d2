"""What 1,000 active ad campaigns add to ``/v1/search`` (issue 11: "/v1/search p50 at most 1 ms slower with
1,000 active campaigns, measured in bench/").

One real server (``python -m engine.cli serve``, i.e. ``vitrine serve``) on the demo index, 1 gunicorn worker
x 8 threads so every phase hits the same process, a fresh event store under ``bench/out/`` and a random ads
key; the query-embedding cache is off (``VITRINE_QUERY_CACHE_SIZE=0``) so every search embeds its query as a
new one would, whichever phase it is in. The same queries (bench_search's shop queries: all 261 distinct
CrowdFlower queries, then demo category leaves; 20 more for warm-up) are searched one at a time (k=10,
keep-alive session) in phases:

- **A1**: no campaigns;
- **B1**: after 1,000 campaigns are created through ``POST /v1/ads/campaigns`` (then 1.5 s for the worker to
  reload them, and the warm-up queries);
- **A2**: after the campaigns are deleted from the store (there is no DELETE route; pausing would keep them
  in the auction's index), 1.5 s and the warm-up queries again;
- then B2, A3, ... for ``--rounds`` rounds (default 3).

Campaigns can only be on or off for the whole server, so A and B cannot alternate request by request. Each
B is compared with the mean of the A phases just before and after it (drift control), and the added cost is
the median over rounds: one round alone (A, B, A2) proved noisy on the shared 2-core machine, its A and A2
p50 up to 0.9 ms apart with the load steady and 1.5 ms apart when it moved.

Campaigns (seed 0): 1-5 demo items, bid 5..200, daily budget 100,000 (pacing lets all in), 1-3 keywords
drawn from the CrowdFlower queries' tokens and bigrams (stop words left out) with random match types; ~30%
also target a 2-level category prefix of a random demo item's path (``Industrial & Scientific > Lab &
Safety``), and then advertise items of that prefix.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ads.py [--queries 300] [--campaigns 1000] [--rounds 3] [--record]
"""
from __future__ import annotations

import argparse
import random
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import requests

import common
from bench_search import CROWDFLOWER, WARMUP, shop_queries, warm_up
from engine.ads.targeting import Keyword, category_matches, keyword_matches, normalize
from engine.events.store import open_event_store

TARGET_MS = 1.0  # issue 11: p50 at most 1 ms slower
SETTLE_S = 1.5  # > reload_check_seconds (0.5 s by default): the worker reloads its campaigns
MATCH_TYPES = ("exact", "phrase", "broad")
_STOP = {"a", "an", "and", "for", "the", "with", "of", "in", "on", "to", "by", "x", "s", "pcs", "pack"}
DB = common.OUT / "ads-bench.db"


# -- campaigns -------------------------------------------------------------------------------------

def keyword_vocabulary() -> list[str]:
    """The CrowdFlower queries' tokens and adjacent-token bigrams, stop words and 1-letter tokens left out."""
    vocab: set[str] = set()
    for q in pd.read_csv(CROWDFLOWER)["query"].astype(str).unique():
        tokens = normalize(q)
        vocab.update(t for t in tokens if len(t) > 1 and t not in _STOP)
        vocab.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:]) if a not in _STOP and b not in _STOP)
    return sorted(vocab)


def make_campaigns(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = keyword_vocabulary()
    rows = common.read_rows(common.DEMO_CATALOG)
    ids = [r["id"] for r in rows]
    by_prefix: dict[str, list[str]] = {}
    for r in rows:
        segs = [s.strip() for s in (r["category"] or "").split(">") if s.strip()]
        if len(segs) >= 2:
            by_prefix.setdefault(" > ".join(segs[:2]), []).append(r["id"])
    prefix_of = {i: p for p, items in by_prefix.items() for i in items}
    prefixed = [r["id"] for r in rows if r["id"] in prefix_of]  # so a prefix is drawn by its item count
    out = []
    for i in range(n):
        targeting: dict[str, Any] = {"keywords": [{"text": t, "match": rng.choice(MATCH_TYPES)}
                                                  for t in rng.sample(vocab, rng.randint(1, 3))]}
        pool = ids
        if rng.random() < 0.3:  # a category campaign: a real path's 2-level prefix, items from under it
            prefix = prefix_of[rng.choice(prefixed)]
            targeting["categories"] = [prefix]
            pool = by_prefix[prefix]
        out.append({"id": f"bench-{i:04d}", "advertiser": f"advertiser-{i % 50:02d}",
                    "items": rng.sample(pool, min(len(pool), rng.randint(1, 5))), "bid": rng.randint(5, 200),
                    "daily_budget": 100_000, "targeting": targeting})
    return out


def create_campaigns(base: str, key: str, campaigns: list[dict[str, Any]]) -> float:
    """POST each campaign; seconds per campaign (mean). Any refusal stops the run."""
    t0 = time.perf_counter()
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {key}"
        for c in campaigns:
            r = s.post(f"{base}/v1/ads/campaigns", json=c, timeout=60)
            if r.status_code != 201:
                raise SystemExit(f"creating campaign {c['id']}: HTTP {r.status_code}: {r.text[:300]}")
    return (time.perf_counter() - t0) / max(len(campaigns), 1)


def delete_campaigns(url: str) -> int:
    """Delete every campaign from the store (no route does; the worker's next reload check sees count 0)."""
    store = open_event_store(url)
    try:
        n: int = store.run_write(lambda conn: conn.execute("DELETE FROM ads_campaigns").rowcount)
    finally:
        store.close()
    return n


# -- the phases ------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)  # client seconds
    took_ms: list[float] = field(default_factory=list)  # server-side Engine.search
    sponsored: list[int] = field(default_factory=list)  # sponsored results per query
    top_category: list[str] = field(default_factory=list)  # the first organic hit's category
    errors: int = 0

    def row(self) -> list[object]:
        s = common.stats_ms(self.latencies)
        n = len(self.sponsored)
        return [self.name, n, s["p50"], s["p99"], s["mean"], float(np.median(self.took_ms)),
                f"{sum(1 for x in self.sponsored if x) / n:.0%}", float(np.mean(self.sponsored)), self.errors]


def run_phase(name: str, base: str, queries: list[str]) -> Phase:
    phase = Phase(name)
    with requests.Session() as s:
        for q in queries:
            t0 = time.perf_counter()
            r = s.get(f"{base}/v1/search", params={"q": q, "k": "10"}, timeout=60)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                phase.errors += 1
                continue
            body = r.json()
            phase.latencies.append(elapsed)
            phase.took_ms.append(float(body["took_ms"]))
            phase.sponsored.append(len(body.get("sponsored") or []))
            hits = body.get("hits") or []
            phase.top_category.append(str(hits[0].get("category") or "") if hits else "")
    s50 = common.stats_ms(phase.latencies)["p50"] if phase.latencies else float("nan")
    print(f"  {name}: p50 {s50:.2f} ms, {sum(phase.sponsored)} sponsored results, {phase.errors} errors "
          f"(load {common.load_avg()})", file=sys.stderr)
    return phase


def targeted(campaigns: list[dict[str, Any]], queries: list[str],
             top_category: list[str]) -> tuple[list[int], list[int]]:
    """Per query, the campaigns its targeting lets in (a keyword matches, or a target category is a prefix of
    the top organic hit's category), before pacing, the relevance floor and the auction; and those by keyword."""
    kws = [[Keyword(k["text"], k["match"]) for k in c["targeting"]["keywords"]] for c in campaigns]
    cats = [c["targeting"].get("categories", []) for c in campaigns]
    both, by_keyword = [], []
    for q, top in zip(queries, top_category):
        kw_hit = [any(keyword_matches(k, q) for k in kw) for kw in kws]
        by_keyword.append(sum(kw_hit))
        both.append(sum(1 for hit, cat in zip(kw_hit, cats) if hit or (cat and category_matches(cat, top))))
    return both, by_keyword


# -- main ------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300, help="distinct queries per phase (default 300)")
    ap.add_argument("--campaigns", type=int, default=1000, help="active campaigns in the B phases (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="B phases, each between two A phases (default 3)")
    ap.add_argument("--record", action="store_true", help="replace the 'ads' section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    load0 = common.load_avg()
    print(f"load average at start: {load0}", file=sys.stderr)
    index = common.ensure_index("demo")
    cfg = common.engine_config(index)
    match_organic = getattr(cfg, "ads_match_organic", None)
    organic = "" if match_organic is None else \
        f", an ad at least as relevant as the organic result it sits above {'on' if match_organic else 'off'}"

    everything = shop_queries(args.queries + WARMUP)
    queries, warmup = everything[:args.queries], everything[args.queries:]
    campaigns = make_campaigns(args.campaigns)
    for p in common.OUT.glob(DB.name + "*"):  # a fresh event store (and its lock, WAL, impression files)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    url = f"sqlite:///{DB}"
    key = "ads-" + secrets.token_hex(16)
    a_phases: list[Phase] = []
    b_phases: list[Phase] = []
    per_post: list[float] = []
    with common.environment({"VITRINE_EVENTS_URL": url, "VITRINE_ADS_KEY": key, "VITRINE_QUERY_CACHE_SIZE": "0"}):
        with common.Server(index, workers=1, threads=8, log_name="serve-ads") as server:
            warm_up(server, warmup)
            a_phases.append(run_phase("A1: no campaigns", server.base, queries))
            for r in range(1, args.rounds + 1):
                per_post.append(create_campaigns(server.base, key, campaigns))
                print(f"  created {len(campaigns)} campaigns, {per_post[-1] * 1e3:.1f} ms each", file=sys.stderr)
                time.sleep(SETTLE_S)
                warm_up(server, warmup)
                b_phases.append(run_phase(f"B{r}: {len(campaigns):,} active campaigns", server.base, queries))
                deleted = delete_campaigns(url)
                if deleted != len(campaigns):
                    raise SystemExit(f"deleted {deleted} campaigns, expected {len(campaigns)}")
                time.sleep(SETTLE_S)
                warm_up(server, warmup)
                a_phases.append(run_phase(f"A{r + 1}: campaigns deleted", server.base, queries))
    if any(sum(a.sponsored) for a in a_phases):
        raise SystemExit("sponsored results without campaigns: the phases are not what they claim")

    def p50(ph: Phase) -> float:
        return common.stats_ms(ph.latencies)["p50"]

    def took(ph: Phase) -> float:
        return float(np.median(ph.took_ms))

    # Each B against the mean of the A phases just before and just after it.
    added = [p50(b) - (p50(a_phases[i]) + p50(a_phases[i + 1])) / 2 for i, b in enumerate(b_phases)]
    added_took = [took(b) - (took(a_phases[i]) + took(a_phases[i + 1])) / 2 for i, b in enumerate(b_phases)]
    drift = [p50(a_phases[i + 1]) - p50(a_phases[i]) for i in range(len(b_phases))]
    overall = float(np.median(added))
    verdict = "met" if overall <= TARGET_MS else "**missed**"
    if min(added) <= TARGET_MS < max(added):
        verdict += " (the rounds disagree; the median decides)"
    order = [ph for i, a in enumerate(a_phases) for ph in ([a, b_phases[i]] if i < len(b_phases) else [a])]
    matched, by_keyword = targeted(campaigns, queries, b_phases[0].top_category)
    n_cat = sum(1 for c in campaigns if c["targeting"].get("categories"))
    n_b = len(b_phases)
    round_lines = [f"  - round {i + 1}: B{i + 1} {p50(b):.2f} - (A{i + 1} {p50(a_phases[i]):.2f} + A{i + 2} "
                   f"{p50(a_phases[i + 1]):.2f}) / 2 = {added[i]:+.2f} ms (server took_ms {added_took[i]:+.2f} ms; "
                   f"A{i + 2} - A{i + 1}: {drift[i]:+.2f} ms)" for i, b in enumerate(b_phases)]
    body = "\n".join([
        "### Sponsored products: `/v1/search` with 1,000 active campaigns (`bench/bench_ads.py`)",
        "",
        common.header("bench_ads.py", argv, load0),
        "",
        f"`GET /v1/search?q=...&k=10` over HTTP (one client, keep-alive) against one `vitrine serve` (1 gunicorn "
        f"worker x 8 threads, so every phase hits the same process; settings as configured: ad slots "
        f"{cfg.ads_search_slots}, relevance floor {cfg.ads_relevance_floor}{organic}, impression logging "
        f"{'on' if cfg.log_impressions else 'off'}; the query-embedding cache off, so every search embeds its query). "
        f"A fresh event store; {len(queries)} distinct queries (bench_search's: the CrowdFlower queries, then demo "
        f"category leaves), each once per phase, after {len(warmup)} warm-up queries before every phase. "
        f"A phases: no campaigns. B phases: {len(campaigns):,} campaigns created through `POST /v1/ads/campaigns` "
        f"({float(np.mean(per_post)) * 1e3:.1f} ms each), then {SETTLE_S} s for the worker to reload them; after "
        f"each B the campaigns are deleted from the store (no route deletes; pausing would leave them in the "
        f"auction's index), {SETTLE_S} s, and the next A follows. Campaigns are global to the server, so A and B "
        f"cannot alternate request by request; instead {n_b} round(s) A, B, A, ..., and each B is compared with the "
        f"mean of the A just before and just after it (drift control); the added cost is the median over rounds.",
        "",
        f"Campaigns (seed 0): 1-5 demo items, bid 5..200 cents, daily budget 100,000 cents; each has 1-3 keywords "
        f"from the CrowdFlower queries' tokens and bigrams with random match types, and {n_cat:,} of the "
        f"{len(campaigns):,} also target a 2-level category prefix of a real item's path (advertising items from "
        f"under it). Targeting lets in a median of {float(np.median(matched)):.0f} (mean "
        f"{float(np.mean(matched)):.1f}, max {max(matched)}) campaigns per query in phase B "
        f"({sum(1 for m in matched if m) / len(matched):.0%} of queries at least one; by keyword alone "
        f"{sum(1 for m in by_keyword if m) / len(by_keyword):.0%} of queries, mean {float(np.mean(by_keyword)):.1f}; "
        f"the rest come from category targets, which match the top organic hit of any query, the demo being one "
        f"Industrial & Scientific catalog), before pacing, the relevance floor and the auction.",
        "",
        common.table(["phase", "queries", "p50 ms", "p99 ms", "mean ms", "server took_ms p50",
                      "queries with a sponsored result", "sponsored results per query", "errors"],
                     [ph.row() for ph in order]),
        "",
        "- Added p50 per round (B minus the mean of its neighbouring A phases):",
        *round_lines,
        f"- Added p50, median over {n_b} round(s): **{overall:+.2f} ms** (server took_ms p50: "
        f"{float(np.median(added_took)):+.2f} ms).",
        f"- Target (issue 11: p50 at most {TARGET_MS:.0f} ms slower with 1,000 active campaigns): " + verdict
        + ("" if len(campaigns) == 1000 else f" (measured with {len(campaigns):,} campaigns, not 1,000)") + ".",
    ])
    print(body)
    if args.record:
        common.record("ads", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
