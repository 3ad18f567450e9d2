"""The advertising side of one engine: what ``web/ads.py`` calls (campaigns now; the auction and the
click charging as they land). Thread-safe: every call is one store transaction."""
from __future__ import annotations

import builtins
import time
from typing import Any, Callable

from engine.ads.campaigns import Campaign, Campaigns, parse_campaign, utc_day
from engine.ads.reports import ReportRow, check_day, daily, hourly, to_csv
from engine.ads.serve import AdServer, AdSettings
from engine.errors import InvalidQuery
from engine.events import EventStore


class Ads:
    def __init__(self, store: Callable[[], EventStore], known_item: Callable[[str], bool], *,
                 settings: AdSettings = AdSettings()) -> None:
        self.campaigns = Campaigns(store, dedupe_window_s=settings.click_window_s)
        self.server = AdServer(self.campaigns, store, settings)
        self._known_item = known_item

    def click(self, body: Any) -> dict[str, Any]:
        """Charge a sponsored result's click: ``{"ad": <its token>}`` (see :meth:`AdServer.click`)."""
        if not isinstance(body, dict):
            raise InvalidQuery("body", "must be a JSON object with 'ad'")
        return self.server.click(body.get("ad")).to_dict()

    def create(self, body: Any, *, now: float | None = None) -> dict[str, Any]:
        """A new campaign from a JSON body (400 naming the first bad field)."""
        return self._with_spend(self.campaigns.create(parse_campaign(body, known_item=self._known_item, now=now)))

    def get(self, campaign_id: str) -> dict[str, Any]:
        return self._with_spend(self.campaigns.get(campaign_id))

    def list(self, advertiser: str | None = None) -> dict[str, Any]:
        day = utc_day(time.time())
        spends = self.campaigns.spends(day)
        return {"day": day, "campaigns": [c.to_dict() | {"spend_today": spends.get(c.id, 0)}
                                          for c in self.campaigns.list(advertiser)]}

    def update(self, campaign_id: str, body: Any) -> dict[str, Any]:
        return self._with_spend(self.campaigns.update(campaign_id, body, known_item=self._known_item))

    def pause(self, campaign_id: str) -> dict[str, Any]:
        return self._with_spend(self.campaigns.set_state(campaign_id, "paused"))

    def resume(self, campaign_id: str) -> dict[str, Any]:
        return self._with_spend(self.campaigns.set_state(campaign_id, "active"))

    def report(self, *, advertiser: str | None = None, campaign: str | None = None, day_from: str | None = None,
               day_to: str | None = None, price_of: Callable[[str], float | None]) -> "builtins.list[ReportRow]":
        """Per campaign and UTC day (default: the last 7 days) of the chosen campaigns (see engine.ads.reports)."""
        today = utc_day(time.time())
        day_to = check_day(day_to, "to") or today
        day_from = check_day(day_from, "from") or utc_day(time.time() - 6 * 86400)
        ids = [campaign] if campaign else [c.id for c in self.campaigns.list(advertiser)]
        if campaign:
            self.campaigns.get(campaign)  # 404 for an unknown one
        return daily(self.campaigns.events(), ids, day_from=day_from, day_to=day_to, price_of=price_of)

    @staticmethod
    def csv(rows: "builtins.list[ReportRow]") -> str:
        """The report as CSV (one header row, then a row per campaign and day)."""
        return to_csv(rows)

    def hourly(self, campaign: str, day: str | None = None) -> dict[str, Any]:
        """Spend and clicks per UTC hour of a day, with the daily budget (the advertiser page's charts)."""
        c = self.campaigns.get(campaign)
        day = check_day(day, "day") or utc_day(time.time())
        return {"campaign_id": c.id, "day": day, "daily_budget": c.daily_budget,
                "hours": hourly(self.campaigns.events(), c.id, day)}

    def _with_spend(self, c: Campaign) -> dict[str, Any]:
        return c.to_dict() | {"spend_today": self.campaigns.spend(c.id, utc_day(time.time()))[0]}
