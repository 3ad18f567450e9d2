"""The auction on a placement's request, and the signed ad that a click brings back (issue 11, part 2).

On a search request (first page), :meth:`AdServer.search` picks the sponsored items:

1. **Live campaigns**: active, within their start and end, with at least the reserve left of today's
   budget (spend cached for ``refresh_s``; the hard check is at charge time). A campaign bids at most what
   is left of its budget, so that its price, never above its bid, fits in the budget. They are kept in memory and reloaded when any
   campaign changes (one ``max(updated_at), count(*)`` read per refresh).
2. **Targeting**: a keyword matches the query (exact, phrase or broad: :mod:`engine.ads.targeting`), or a
   target category is the query's category: the category filter, else the top organic hit's category.
   An inverted index from keyword tokens and category prefixes to campaigns keeps this cheap at
   thousands of campaigns.
3. **Relevance floor**: each advertised item's vector score (cosine of the query and item vectors, the
   vector half of the hybrid score) must reach ``ads_relevance_floor``. Items already on the page
   organically, out of stock or not in the served catalog never enter, nor do items with the exact title
   of one on the page (another seller's listing of the same product: the similar strip leaves those out
   too); two with one title never both win.
4. **Frequency caps**: a campaign with ``frequency_cap`` does not enter for a shopper already shown it that
   many times this UTC day (counted from the impression log).
5. **Pacing**: each campaign enters with its pacer's participation probability (:mod:`engine.ads.pacing`),
   updated once a minute from today's spend and the share of the day's traffic passed (the hourly traffic
   curve: ``AdSettings.traffic_curve``, else learned from the impression log, else uniform), drawn with the
   request's generator.
6. **At least as relevant as organic** (``ads_match_organic``, off by default): an ad may take a position only
   if its relevance is at least that of the organic result it sits above (the organic result at that
   position, by the same score). A slot is then the highest position its ad may take: it may show lower,
   up to the next slot, where it is as relevant (``run_auction``'s ``page_relevance``).
7. **The auction**: GSP by quality x bid (:func:`engine.ads.auction.run_auction`) over the
   ``ads_search_slots`` positions, with the ``ads_reserve`` price. Quality is the predicted CTR times
   ``relevance ** ads_relevance_power`` (1 by default; 0 for CTR alone). Predicted CTR: the item's click
   rate from the event log, smoothed with a prior (:func:`engine.learn`-style ``item_rates``), the
   calibrated statistic of a new ad.

Each winner is returned with a signed ``ad`` token (campaign, item, price, request id, shopper, time; an
HMAC with a random key kept in the event store, so every process verifies every other's). A click sends
the token back (``POST /v1/ads/clicks``), and :meth:`AdServer.click` charges the campaign the auction's
price, once per ad impression (the click id is the request id and item) and once per shopper, campaign
and item within ``ads_click_window_minutes``. Tokens expire after ``TOKEN_TTL_S``.

Thread-safe: the caches are swapped whole under a lock; pacers are updated under it.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from engine.ads.auction import Bidder, run_auction
from engine.ads.campaigns import Campaign, Campaigns, Charge, utc_day
from engine.ads.pacing import Pacer
from engine.ads.targeting import category_matches, category_segments, keyword_matches, normalize
from engine.errors import InvalidQuery, StoreUnavailable
from engine.events import EventStore

TOKEN_TTL_S = 3600.0
PACING_STEP_S = 60.0
SIMILAR_MIN = 0.6  # a context item is "similar to" a campaign's item from this cosine on
KEY_DDL = "CREATE TABLE IF NOT EXISTS ads_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


@dataclass(frozen=True)
class SponsoredHit:
    """One sponsored item on a page: where, which campaign, and the token its click sends back."""

    id: str
    title: str
    category: str
    brand: str
    price: float | None
    position: int  # 1-based display position among the page's results
    campaign_id: str
    relevance: float  # vector score against the query
    ad: str  # signed token for POST /v1/ads/clicks
    cpc: int = 0  # the auction's price per click (minor units): logged, never shown to shoppers

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "category": self.category, "brand": self.brand,
                "price": self.price, "position": self.position, "sponsored": True, "campaign_id": self.campaign_id,
                "relevance": round(self.relevance, 6), "ad": self.ad}


@dataclass(frozen=True)
class AdSettings:
    search_slots: tuple[int, ...] = (1, 5)
    reserve: int = 5  # minor units
    relevance_floor: float = 0.35
    click_window_s: float = 600.0
    refresh_s: float = 1.0
    similar_slots: tuple[int, ...] = (6,)
    recommend_slots: tuple[int, ...] = (2,)
    match_organic: bool = False  # an ad must be at least as relevant as the organic result at its position
    # 24 hourly traffic weights (UTC) the pacers spread budgets over; None: learned from the impression log
    # (lists served per hour over the last 7 days), uniform until there is any
    traffic_curve: tuple[float, ...] | None = None
    relevance_power: float = 0.0  # quality = predicted CTR x relevance ** power (0: CTR alone)
    pacing_finish: float = 1.0  # the fraction of the day by which a pacer plans to have spent the budget
    pacing_tolerance: float = 0.0  # clicks at the campaign's bid a pacer may be ahead of its plan unthrottled

    def slots_of(self, placement: str) -> tuple[int, ...]:
        return {"search": self.search_slots, "similar": self.similar_slots,
                "recommend": self.recommend_slots}.get(placement, ())


class _Index:
    """Live campaigns by keyword token and by category prefix."""

    def __init__(self, campaigns: list[Campaign]) -> None:
        self.campaigns = campaigns
        self.by_token: dict[str, set[int]] = {}
        self.by_category: dict[tuple[str, ...], set[int]] = {}
        for i, c in enumerate(campaigns):
            for k in c.targeting.keywords:
                for token in normalize(k.text):
                    for form in (token, token.rstrip("s")):  # broad match accepts simple plurals
                        self.by_token.setdefault(form, set()).add(i)
            for cat in c.targeting.categories:
                self.by_category.setdefault(tuple(s.lower() for s in category_segments(cat)), set()).add(i)

    def matching(self, query: str, category: str | None) -> list[Campaign]:
        tokens = normalize(query)
        found: set[int] = set()
        for t in tokens:
            found |= self.by_token.get(t, set()) | self.by_token.get(t.rstrip("s"), set())
        hits = [i for i in sorted(found) if any(keyword_matches(k, query) for k in self.campaigns[i].targeting.keywords)]
        if category:
            taken = set(hits)
            segs = tuple(s.lower() for s in category_segments(category))
            for n in range(1, len(segs) + 1):
                for i in sorted(self.by_category.get(segs[:n], set()) - taken):
                    taken.add(i)
                    hits.append(i)
        return [self.campaigns[i] for i in hits]


class AdServer:
    def __init__(self, campaigns: Campaigns, store: Callable[[], EventStore], settings: AdSettings) -> None:
        self.campaigns = campaigns
        self._store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._stamp: tuple[Any, ...] | None = None
        self._checked = -1e18
        self._spend: dict[str, int] = {}
        self._spend_day = ""
        self._pacers: dict[tuple[str, str], Pacer] = {}
        self._paced_at: dict[tuple[str, str], float] = {}
        self._curve: tuple[float, tuple[float, ...] | None] = (-1e18, None)  # (computed at, curve)
        self._key: bytes | None = None

    # -- state ------------------------------------------------------------------------------------------
    def _refresh(self, now: float) -> _Index:
        with self._lock:
            if self._index is not None and time.monotonic() - self._checked < self.settings.refresh_s:
                return self._index
            self._checked = time.monotonic()
            store = self.campaigns.events()
            stamp = store.run_read(lambda c: tuple(c.execute(
                "SELECT max(updated_at), count(*) FROM ads_campaigns").fetchone()))
            if stamp != self._stamp or self._index is None:
                self._index = _Index(self.campaigns.list())
                self._stamp = stamp
            self._spend_day = utc_day(now)
            self._spend = self.campaigns.spends(self._spend_day)
            return self._index

    def _pacer(self, c: Campaign, now: float) -> Pacer:
        key = (c.id, utc_day(now))
        pacer = self._pacers.get(key)
        tolerance = int(round(self.settings.pacing_tolerance * c.bid))
        if pacer is None or pacer.budget != c.daily_budget or pacer.tolerance != tolerance:  # new, or edited
            if len(self._pacers) > 10_000:
                self._pacers = {k: v for k, v in self._pacers.items() if k[1] == key[1]}
            pacer = self._pacers[key] = Pacer(c.daily_budget, finish=self.settings.pacing_finish, tolerance=tolerance)
        spend = self._spend.get(c.id, 0)
        if spend >= c.daily_budget or now - self._paced_at.get(key, -1e18) >= PACING_STEP_S:
            # the pacer's gain is per step of about a minute (engine.ads.pacing), whatever the traffic
            midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                                microsecond=0)
            pacer.update(min(spend, c.daily_budget), (now - midnight.timestamp()) / 86400.0, self._traffic(now))
            self._paced_at[key] = now
        return pacer

    def throttled(self, campaign_id: str, day: str) -> bool:
        """Whether the campaign's pacer held back from auctions on ``day`` (UTC, ``YYYY-MM-DD``) with budget
        left: false means it entered every auction it matched, so its spend was all its demand that day."""
        with self._lock:
            pacer = self._pacers.get((campaign_id, day))
            return pacer is not None and pacer.throttled

    def _traffic(self, now: float) -> tuple[float, ...] | None:
        """The hourly traffic curve the pacers follow: the setting, else the lists served per UTC hour over the
        last 7 days in the impression log (recomputed hourly; uniform while the log is empty)."""
        if self.settings.traffic_curve is not None:
            return self.settings.traffic_curve
        at, curve = self._curve
        if now - at < 3600.0:
            return curve
        try:
            rows = self._store().run_read(lambda conn: conn.execute(
                "SELECT CAST(strftime('%H', ts, 'unixepoch') AS INTEGER), count(*) FROM impressions "
                "WHERE ts >= ? AND ts < ? GROUP BY 1", (now - 7 * 86400.0, now)).fetchall())
        except StoreUnavailable:
            rows = []
        counts = dict((int(h), int(n)) for h, n in rows)
        curve = tuple(1.0 + counts.get(h, 0) for h in range(24)) if sum(counts.values()) >= 240 else None
        self._curve = (now, curve)
        return curve

    def _signing_key(self) -> bytes:
        if self._key is None:
            store = self.campaigns.events()
            store.ensure_tables((KEY_DDL,))

            def write(conn: sqlite3.Connection) -> str:
                row = conn.execute("SELECT value FROM ads_meta WHERE key = 'token_key'").fetchone()
                if row is not None:
                    return str(row[0])
                value = secrets.token_hex(32)
                conn.execute("INSERT INTO ads_meta VALUES ('token_key', ?)", (value,))
                return value

            self._key = bytes.fromhex(store.run_write(write))
        return self._key

    def any_campaign(self, now: float | None = None) -> bool:
        """Whether any campaign exists (from the cached index): placements skip their context reads if not."""
        try:
            return bool(self._refresh(time.time() if now is None else now).campaigns)
        except StoreUnavailable:
            return False

    # -- the auction ----------------------------------------------------------------------------------
    def search(self, *, query: str, category: str | None, qvec: np.ndarray, **kw: Any) -> list[SponsoredHit]:
        """The sponsored items of one search page (see the module docstring); [] when nothing qualifies
        or the store cannot be read (search answers without ads)."""
        return self.place("search", lambda index, live: index.matching(query, category), qvec, **kw)

    def context(self, placement: str, *, category: str | None, audience: Sequence[str], near: np.ndarray | None,
                context_vec: np.ndarray, **kw: Any) -> list[SponsoredHit]:
        """The sponsored items of an item page's similar strip (``placement`` "similar": ``category`` is the
        page item's, ``near`` its vector) or of a shopper's recommendations ("recommend": ``audience`` the
        leaf categories of their recent items, ``near`` those items' vectors). A campaign matches when one of
        its categories is ``category``'s or an audience one, one of its audience categories is in
        ``audience``, or one of its ``similar_to`` items is a vector neighbour (cosine >= ``SIMILAR_MIN``)
        of ``near``; relevance is the cosine of ``context_vec`` and the advertised item."""
        item_ids = kw["item_ids"]
        vectors = kw["item_vectors"]

        def matching(index: _Index, live: Callable[[Campaign], bool]) -> list[Campaign]:
            out = []
            for c in index.campaigns:
                if not live(c):
                    continue
                t = c.targeting
                if t.categories and any(category_matches(t.categories, x) for x in [category or "", *audience] if x):
                    out.append(c)
                elif t.audience_categories and any(category_matches(t.audience_categories, x) for x in audience):
                    out.append(c)
                elif t.similar_to and near is not None and len(near):
                    rows = [r for r in item_ids(list(t.similar_to)) if r >= 0]
                    if rows and float((np.asarray(vectors[rows], np.float32) @ np.asarray(near, np.float32).T).max()) \
                            >= SIMILAR_MIN:
                        out.append(c)
            return out

        return self.place(placement, matching, context_vec, **kw)

    def place(self, placement: str, match: Callable[[_Index, Callable[[Campaign], bool]], list[Campaign]],
              context_vec: np.ndarray,
              *, item_ids: Callable[[Sequence[str]], list[int]], item_vectors: np.ndarray, organic: Sequence[str],
              in_stock: np.ndarray, ctr_of: Callable[[list[str]], np.ndarray], product: Callable[[int], Any],
              user: str | None, request_id: str, rng: np.random.Generator, now: float | None = None,
              organic_scores: Sequence[float] | None = None,
              same_product: Callable[[int], str] | None = None) -> list[SponsoredHit]:
        """One placement's auction over the campaigns ``match`` keeps (see the module docstring).
        ``same_product(row)``: the key two listings of one product share (the exact title's); an item whose
        key is on the page does not enter, and two with one key never both win. None: each item is its own."""
        slots = self.settings.slots_of(placement)
        if not slots:
            return []
        now = time.time() if now is None else now
        try:
            index = self._refresh(now)

            def on(c: Campaign) -> bool:  # live, with at least the reserve left of its budget
                return c.live(now) and c.daily_budget - self._spend.get(c.id, 0) >= max(self.settings.reserve, 1)

            live = [c for c in match(index, on) if on(c)]
            if live and user is not None and any(c.frequency_cap is not None for c in live):
                seen = self._seen_today(user, now)
                live = [c for c in live if c.frequency_cap is None or seen.get(c.id, 0) < c.frequency_cap]
        except StoreUnavailable:
            return []
        if not live:
            return []
        shown = set(organic)
        on_page = ({same_product(r) for r in item_ids(list(shown)) if r >= 0} if same_product is not None
                   else set())
        bidders: list[Bidder] = []
        meta: dict[tuple[str, str], tuple[int, float]] = {}
        with self._lock:
            entering = [c for c in live if self._pacer(c, now).participates(rng)]
        for c in entering:
            items = [i for i in c.items if i not in shown]
            rows = item_ids(items)
            keep = [(i, r) for i, r in zip(items, rows) if r >= 0 and bool(in_stock[r])
                    and (same_product is None or same_product(r) not in on_page)]
            if not keep:
                continue
            rel = np.asarray(item_vectors[[r for _, r in keep]], np.float32) @ np.asarray(context_vec, np.float32)
            ctr = ctr_of([i for i, _ in keep])
            for (item, row), score, p in zip(keep, rel.tolist(), ctr.tolist()):
                if score >= self.settings.relevance_floor:  # bids at most what is left of its budget
                    bid = min(c.bid, c.daily_budget - self._spend.get(c.id, 0))
                    q = p * max(score, 1e-6) ** self.settings.relevance_power
                    bidders.append(Bidder(c.id, item, bid, float(min(max(q, 1e-6), 1.0)), float(score),
                                          "" if same_product is None else same_product(row)))
                    meta[(c.id, item)] = (row, float(score))
        page = None
        if self.settings.match_organic and organic_scores is not None:
            # an ad sits above the organic result at its position: it must be at least as relevant, and may
            # show lower on the page (up to the next ad slot) where it is
            page = [max(self.settings.relevance_floor, float(x)) for x in organic_scores]
        won = run_auction(bidders, slots, reserve=self.settings.reserve, exclude_items=shown, page_relevance=page)
        out = []
        for w in won:
            row, score = meta[(w.bidder.campaign_id, w.bidder.item_id)]
            p = product(row)
            token = self.sign({"c": w.bidder.campaign_id, "i": w.bidder.item_id, "p": w.price, "r": request_id,
                               "u": user, "t": round(now, 3)})
            out.append(SponsoredHit(p.id, p.title, p.category_path, p.brand, p.price, w.position,
                                    w.bidder.campaign_id, score, token, w.price))
        return out

    def _seen_today(self, user: str, now: float) -> dict[str, int]:
        """Sponsored impressions of each campaign shown to ``user`` this UTC day (the impression log; the last
        flush interval may be missing), for the frequency caps."""
        midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        rows = self._store().run_read(lambda conn: conn.execute(
            "SELECT context FROM impressions WHERE user_id = ? AND ts >= ? AND surface LIKE 'ads_%'",
            (user, midnight.timestamp())).fetchall())
        seen: dict[str, int] = {}
        for (context,) in rows:
            for cid in (json.loads(context or "{}") or {}).get("campaigns", []):
                seen[cid] = seen.get(cid, 0) + 1
        return seen

    # -- clicks ---------------------------------------------------------------------------------------
    def sign(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
        mac = hmac.new(self._signing_key(), body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{mac}"

    def verify(self, token: Any, now: float) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
            raise InvalidQuery("ad", "must be the 'ad' token of a sponsored result")
        body, mac = token.split(".")
        want = hmac.new(self._signing_key(), body.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, want):
            raise InvalidQuery("ad", "is not a token this shop signed")
        payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if now - float(payload["t"]) > TOKEN_TTL_S:
            raise InvalidQuery("ad", "has expired: a sponsored result's click counts within an hour")
        return payload

    def click(self, token: Any, *, now: float | None = None) -> Charge:
        """Charge the click of a sponsored result (its token): at most once per ad impression, and once per
        shopper, campaign and item within the click window; never past the daily budget by more than this
        click's price."""
        now = time.time() if now is None else now
        ad = self.verify(token, now)
        campaign = self.campaigns.get(str(ad["c"]))
        charge = self.campaigns.charge(f"{ad['r']}:{ad['i']}", campaign, str(ad["i"]), ad.get("u"), int(ad["p"]),
                                       now=now, request_id=str(ad["r"]))
        with self._lock:
            if charge.charged and self._spend_day == utc_day(now):
                self._spend[campaign.id] = charge.spend
        return charge
