"""The OpenAPI 3.1 description of every route (served at /v1/openapi.json).

Kept honest by two tests: tests/test_api.py checks that every route is described, tests/test_schemathesis.py
fuzzes a real server against this document (status codes, content types and bodies of every answer).
"""
from __future__ import annotations

from typing import Any

from engine import STRATEGIES

# Ids in a URL path (``<path:...>``): any text without a line feed, not starting with '/'.
_PATH_ID = {"type": "string", "minLength": 1, "pattern": "^[^/\\n][^\\n]*$"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}, "description": "per event type"}


def _q(name: str, schema: dict[str, Any], desc: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": desc}


def _path(name: str, desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or _PATH_ID, "description": desc}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(ref: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, **_json(_ref(ref))}


_ERRORS = {
    "400": "invalid parameter or body (`field` names it)",
    "401": "no key, a wrong key or a bad shopper token",
    "403": "the scope is off (no key configured), or a shopper's token or session asks for another's data",
    "404": "no such item, job, version or experiment; also an id the URL cannot carry (empty, or with a line feed)",
    "409": "a build is running",
    "413": "body over 16 MiB",
    "414": "request line over the server's limit (a very long query)",
    "429": "too many wrong keys from this address, or too many events from a shopper's session or token "
           "(see the Retry-After header)",
    "503": "no index published yet, or the event store is unavailable",
}


def _responses(ok: dict[str, Any], *errors: str, status: str = "200") -> dict[str, Any]:
    """``ok`` under ``status``, and each of ``errors`` with the Error body."""
    return {status: ok, **{code: {"description": _ERRORS[code], **_json(_ref("Error"))} for code in errors}}


_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
_AUTH = ("401", "403", "429")
_READ: list[dict[str, list[str]]] = [{"read": []}, {"bearer": []}, {"shopperToken": []}]
_INGEST: list[dict[str, list[str]]] = [{"ingest": []}, {"shopperToken": []}]
_ADS: list[dict[str, list[str]]] = [{"ads": []}]
_CAMPAIGN_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.:-]+$"}

_HIT = {
    "type": "object",
    "required": ["id", "title", "category", "brand", "price", "in_stock", "score", "score_parts"],
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "category": {"type": "string"},
        "brand": {"type": "string"}, "price": _NULLABLE_NUMBER,
        "in_stock": {"type": ["boolean", "null"]}, "score": {"type": "number"},
        "score_parts": {"type": "object", "required": ["bm25", "vector"], "properties": {
            "bm25": {"type": "number"}, "vector": {"type": "number"},
            "personal": {"type": "number", "description": "only when re-ranked for a `user`"}}},
    },
}


def openapi_document() -> dict[str, Any]:
    k = _q("k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
           "number of results, at most max_k (100 by default)")
    filters = [
        _q("category", {"type": "string"}, "category path prefix, 'A > B'"),
        _q("min_price", {"type": "number", "minimum": 0}, "lowest price (excludes unpriced items)"),
        _q("max_price", {"type": "number", "minimum": 0}, "highest price (excludes unpriced items)"),
        _q("in_stock", {"type": "boolean"}, "true: only items not marked out of stock"),
    ]
    user_id = _path("user_id", "the shop's user id")
    qa_params = [_q("q", {"type": "string", "minLength": 1, "maxLength": 500}, "the shopper's question (not blank)",
                    True),
                 _q("k", {"type": "integer", "minimum": 1, "maximum": 20, "default": 5}, "number of answers")]
    from web import openapi_analytics  # issue 12: /v1/admin/analytics

    return {
        "openapi": "3.1.0",
        "info": {"title": "Vitrine API", "version": "1"},
        "paths": {
            **openapi_analytics.paths(),
            "/v1/search": {"get": {
                "summary": "Hybrid (BM25 + vector) product search with filters and paging; with `user`, "
                           "re-ranked for that shopper (their data: the read scope, or their own token or "
                           "session)",
                "security": [{}, *_READ],
                "parameters": [
                    _q("q", {"type": "string", "minLength": 1, "maxLength": 500},
                       "the search box text (not blank)", True), k,
                    _q("offset", {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
                       "results to skip, at most max_offset (1000 by default)"),
                    *filters,
                    _q("user", {"type": "string"}, "re-rank for this shopper's profile"),
                    _q("personalize", {"type": "number", "minimum": 0, "maximum": 1},
                       "personalization strength with `user` (0 = off; default from config)"),
                ],
                "responses": _responses(_ok("SearchResult"), "400", *_AUTH, "414", "503"),
            }},
            "/v1/suggest": {"get": {
                "summary": "Type-ahead suggestions: category names and item titles matching the typed text. "
                           "Earlier words match whole words, the last one as a prefix; words of 4+ characters "
                           "may have one typo, of 8+ two. Exact and prefix matches first, then categories "
                           "(more items first), then shorter texts",
                "parameters": [
                    _q("q", {"type": "string", "minLength": 1, "maxLength": 100}, "the text typed so far (not blank)",
                       True),
                    _q("k", {"type": "integer", "minimum": 1, "maximum": 20, "default": 8}, "number of suggestions"),
                ],
                "responses": _responses(_ok("Suggestions"), "400", "414", "503"),
            }},
            "/v1/items/{item_id}": {"get": {
                "summary": "One catalog item, with its event statistics",
                "parameters": [_path("item_id", "the catalog id")],
                "responses": _responses(_ok("ItemDetail"), "404", "414", "503"),
            }},
            "/v1/items/{item_id}/similar": {"get": {
                "summary": "Nearest neighbours of the item (itself and exact-title duplicates excluded), and "
                           "the items most often taken with it",
                "parameters": [_path("item_id", "the catalog id"), k,
                               _q("same_category", {"type": "boolean", "default": False}, "only the item's category")],
                "responses": _responses(_ok("Similar"), "400", "404", "414", "503"),
            }},
            "/v1/items/{item_id}/answers": {"get": {
                "summary": "Answers to a shopper's question about the item: the catalog fields it names first "
                           "(`source` says which), then past answers by score, a calibrated probability that they "
                           "answer it; none below `qa_min_score` (then `no_answer` is true, with a message)",
                "parameters": [_path("item_id", "the catalog id"), *qa_params],
                "responses": _responses(_ok("Answers"), "400", "404", "414", "503"),
            }},
            "/v1/answers": {"get": {
                "summary": "Past answers to a shopper's question across the catalog (each names its item)",
                "parameters": qa_params,
                "responses": _responses(_ok("Answers"), "400", "414", "503"),
            }},
            "/v1/info": {"get": {"summary": "The served version, for anyone (no paths or hashes)",
                                 "responses": _responses(_ok("Info"), "503")}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OK", **_json({"type": "object", "required": ["openapi", "info", "paths"]})}}}},
            "/healthz": {"get": {"summary": "Liveness and the published version; always 200",
                                 "responses": {"200": _ok("Health")}}},
            "/v1/events": {"post": {
                "summary": "Record shopper events (one, a list, or {events: [...]}; at most 1,000). "
                           "Idempotent on event_id; durable before the answer. A shopper's token or storefront "
                           "session sends that shopper's events only, rate-limited",
                "security": _INGEST,
                "requestBody": {"required": True, **_json(_ref("EventBatch"))},
                "responses": _responses(_ok("IngestResult"), "400", *_AUTH, "413", "503"),
            }},
            "/v1/users/{user_id}/recommendations": {"get": {
                "summary": "Blended recommendations (content, co-occurrence, trending) with a reason each; "
                           "cold-start answers for an unknown shopper",
                "security": _READ,
                "parameters": [user_id, k, *filters,
                               _q("exclude", {"type": "string"}, "comma-separated item ids to leave out"),
                               _q("diversity", {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
                                  "MMR diversity: 0 = by score only"),
                               _q("strategy", {"type": "string", "enum": list(STRATEGIES)},
                                  "one strategy instead of the strategy policy's choice (default: the policy, "
                                  "or the blend)")],
                "responses": _responses(_ok("Recommendations"), "400", *_AUTH, "404", "414", "503"),
            }},
            "/v1/recommendations": {"post": {
                "summary": "Recommendations for an anonymous session from its recent items",
                "requestBody": {"required": True, **_json(_ref("SessionRecommendationRequest"))},
                "responses": _responses(_ok("Recommendations"), "400", "413", "503"),
            }},
            "/v1/users/{user_id}": {
                "get": {"summary": "A shopper's features (zeros for an unknown shopper)", "security": _READ,
                        "parameters": [user_id],
                        "responses": _responses(_ok("UserFeatures"), *_AUTH, "404", "414", "503")},
                "delete": {"summary": "Delete everything of the shopper; returns a deletion receipt (what was "
                                      "removed, with counts and a time)", "security": _ADMIN,
                           "parameters": [user_id],
                           "responses": _responses(_ok("DeletedUser"), *_AUTH, "404", "414", "503")},
            },
            "/v1/users/{user_id}/consent": {
                "get": {"summary": "The shopper's consent to personalization (true unless they said no)",
                        "security": _READ, "parameters": [user_id],
                        "responses": _responses(_ok("Consent"), *_AUTH, "404", "414", "503")},
                "put": {"summary": "Set the shopper's consent to personalization; false drops their profile and "
                                   "shopper features at once", "security": _INGEST, "parameters": [user_id],
                        "requestBody": {"required": True, **_json(_ref("ConsentRequest"))},
                        "responses": _responses(_ok("Consent"), "400", *_AUTH, "404", "413", "414", "503")},
            },
            "/v1/admin/deletions/{receipt}": {"get": {
                "summary": "Verify a deletion receipt: re-checks that nothing of the shopper remains",
                "security": _ADMIN,
                "parameters": [_path("receipt", "the receipt id from DELETE /v1/users/{user_id}",
                                     {"type": "string", "minLength": 1})],
                "responses": _responses(_ok("DeletionCheck"), *_AUTH, "404", "414", "503"),
            }},
            "/v1/admin/versions": {"get": {
                "summary": "The served version, the history a rollback walks back, the versions on disk and "
                           "the served version's whole manifest",
                "security": _ADMIN,
                "responses": _responses(_ok("Versions"), *_AUTH),
            }},
            "/v1/admin/rebuild": {"post": {
                "summary": "Start a background rebuild (re-embeds only changed items unless full)",
                "security": _ADMIN,
                "requestBody": {"required": False, **_json(_ref("RebuildRequest"))},
                "responses": _responses(_ok("JobStarted", "started"), "400", *_AUTH, "409", "413", status="202"),
            }},
            "/v1/admin/rebuild/{job}": {"get": {
                "summary": "Progress of a rebuild job", "security": _ADMIN,
                "parameters": [_path("job", "job id from POST /v1/admin/rebuild", {"type": "string", "minLength": 1})],
                "responses": _responses(_ok("Job"), *_AUTH, "404", "414"),
            }},
            "/v1/admin/stats": {"get": {
                "summary": "Event counts per UTC day and type over the last `days` calendar days (today "
                           "included, by event timestamp), totals per type, events and distinct shoppers; per "
                           "surface, the lists logged in those days with their attributed outcomes",
                "security": _ADMIN,
                "parameters": [_q("days", {"type": "integer", "minimum": 1, "maximum": 366, "default": 30},
                                  "days to cover, today included")],
                "responses": _responses(_ok("EventStats"), "400", *_AUTH, "414", "503"),
            }},
            "/v1/admin/experiments": {
                "get": {"summary": "Every experiment, newest first, with per-variant lists, outcomes and rates (95% "
                                   "intervals) from its start to its stop or now; an interleave also with its result",
                        "security": _ADMIN,
                        "responses": _responses(_ok("ExperimentList"), *_AUTH, "503")},
                "post": {"summary": "Start an experiment on a surface (at most one runs per surface): a sticky split "
                                    "of shoppers by hashed id, or team-draft interleaving of two search rankings",
                         "security": _ADMIN,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("ExperimentRequest"), "example": {
                                 "name": "blend-vs-ranker", "surface": "search", "kind": "split", "variants": [
                                     {"name": "blend", "policy": "blend", "share": 0.5},
                                     {"name": "ranker", "policy": "ranker", "share": 0.5}]}}}},
                         "responses": _responses(_ok("ExperimentReport", "started"), "400", *_AUTH, "413", "503",
                                                 status="201")},
            },
            "/v1/admin/experiments/{name}/stop": {"post": {
                "summary": "Stop the experiment: from then on its surface is served as without it (stopping a "
                           "stopped one changes nothing)",
                "security": _ADMIN,
                "parameters": [{**_path("name", "the experiment's name", {"type": "string", "minLength": 1}),
                                "example": "blend-vs-ranker"}],
                "responses": _responses(_ok("ExperimentReport"), *_AUTH, "404", "414", "503"),
            }},
            "/v1/admin/experiments/{name}/winner": {"post": {
                "summary": "Record the winning variant, stopping the experiment if it runs (a winner, once "
                           "chosen, stays)",
                "security": _ADMIN,
                "parameters": [{**_path("name", "the experiment's name", {"type": "string", "minLength": 1}),
                                "example": "blend-vs-ranker"}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("WinnerRequest"), "example": {"variant": "ranker"}}}},
                "responses": _responses(_ok("ExperimentReport"), "400", *_AUTH, "404", "413", "414", "503"),
            }},
            "/v1/ads/clicks": {"post": {
                "summary": "A sponsored result was clicked: charge its campaign the auction's price, once per ad "
                           "impression and per shopper within the click window, never past the daily budget by "
                           "more than one click (no key: the signed ad token is the proof)",
                "requestBody": {"required": True, **_json({"type": "object", "required": ["ad"], "properties": {
                    "ad": {"type": "string", "description": "the `ad` token of a sponsored search result"}}})},
                "responses": _responses(_ok("AdCharge"), "400", "404", "413", "503"),
            }},
            "/v1/ads/reports": {"get": {
                "summary": "Per campaign and UTC day: impressions, clicks, CTR, spend, average CPC, purchases "
                           "attributed within 24 h of a click, revenue and ROAS (JSON, or CSV with format=csv)",
                "security": _ADS,
                "parameters": [_q("advertiser", {"type": "string"}, "one advertiser's campaigns"),
                               _q("campaign", _CAMPAIGN_ID, "one campaign"),
                               _q("from", {"type": "string", "format": "date"}, "first UTC day (default: 6 days ago)"),
                               _q("to", {"type": "string", "format": "date"}, "last UTC day (default: today)"),
                               _q("format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, "json or csv")],
                "responses": {**_responses(_ok("AdReport"), "400", *_AUTH, "404", "414", "503"),
                              "200": {"description": "OK", "content": {
                                  "application/json": {"schema": _ref("AdReport")},
                                  "text/csv": {"schema": {"type": "string"}}}}},
            }},
            "/v1/ads/reports/hourly": {"get": {
                "summary": "One campaign's spend and clicks per UTC hour of a day, with its daily budget",
                "security": _ADS,
                "parameters": [_q("campaign", _CAMPAIGN_ID, "the campaign", required=True),
                               _q("day", {"type": "string", "format": "date"}, "UTC day (default: today)")],
                "responses": _responses(_ok("AdHourly"), "400", *_AUTH, "404", "414", "503"),
            }},
            "/v1/ads/campaigns": {
                "get": {"summary": "The advertisers' campaigns (optionally one advertiser's), with today's spend",
                        "security": _ADS,
                        "parameters": [_q("advertiser", {"type": "string"}, "only this advertiser's campaigns")],
                        "responses": _responses(_ok("CampaignList"), "400", *_AUTH, "414", "503")},
                "post": {"summary": "Create a campaign: items, bid per click and daily budget (integers in minor "
                                    "units), start, end, targeting; 400 names the first bad field",
                         "security": _ADS,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("CampaignRequest"), "example": {
                                 "advertiser": "acme", "name": "gloves", "items": ["gloves-nitrile-m"], "bid": 40,
                                 "daily_budget": 5000, "targeting": {"keywords": [
                                     {"text": "nitrile gloves", "match": "phrase"}]}}}}},
                         "responses": _responses(_ok("Campaign", "created"), "400", *_AUTH, "413", "503",
                                                 status="201")},
            },
            "/v1/ads/campaigns/{campaign_id}": {
                "get": {"summary": "One campaign, with today's spend", "security": _ADS,
                        "parameters": [_path("campaign_id", "the campaign's id", _CAMPAIGN_ID)],
                        "responses": _responses(_ok("Campaign"), *_AUTH, "404", "414", "503")},
                "patch": {"summary": "Change a campaign (any field but id and advertiser; validated as a new one)",
                          "security": _ADS,
                          "parameters": [_path("campaign_id", "the campaign's id", _CAMPAIGN_ID)],
                          "requestBody": {"required": True, **_json(_ref("CampaignPatch"))},
                          "responses": _responses(_ok("Campaign"), "400", *_AUTH, "404", "413", "414", "503")},
            },
            "/v1/ads/campaigns/{campaign_id}/pause": {"post": {
                "summary": "Pause a campaign: it stops showing at once", "security": _ADS,
                "parameters": [_path("campaign_id", "the campaign's id", _CAMPAIGN_ID)],
                "responses": _responses(_ok("Campaign"), *_AUTH, "404", "414", "503")}},
            "/v1/ads/campaigns/{campaign_id}/resume": {"post": {
                "summary": "Resume a paused campaign", "security": _ADS,
                "parameters": [_path("campaign_id", "the campaign's id", _CAMPAIGN_ID)],
                "responses": _responses(_ok("Campaign"), *_AUTH, "404", "414", "503")}},
            "/v1/admin/rollback": {"post": {
                "summary": "Serve the version served before the current one (one step back in the history)",
                "security": _ADMIN,
                "responses": _responses(_ok("Rollback"), *_AUTH, "404", "409"),
            }},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description":
                           "the admin key (or the admin page's session with its X-CSRF-Token)"},
                "ingest": {"type": "http", "scheme": "bearer", "description": "the ingest key"},
                "ads": {"type": "http", "scheme": "bearer", "description": "the ads key (campaigns and reports)"},
                "read": {"type": "http", "scheme": "bearer", "description":
                         "the read key (shoppers' data); the admin key reads too"},
                "shopperToken": {"type": "apiKey", "in": "header", "name": "X-Shopper-Token", "description":
                                 "a shopper's token signed by the shop: that shopper's own data and events "
                                 "(a storefront session of the shopper, with X-CSRF-Token for writes, "
                                 "stands in for it)"},
            },
            "schemas": {
                **openapi_analytics.SCHEMAS,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "field": {"type": "string", "description": "the parameter, body field or request part"}}}}},
                "Health": {"type": "object", "required": ["status", "index_version"], "properties": {
                    "status": {"type": "string", "enum": ["ok", "no_index", "degraded"]},
                    "index_version": {"type": ["string", "null"]},
                    "reason": {"type": "string", "description": "degraded only: what does not work"}}},
                "Hit": _HIT,
                "SearchResult": {"type": "object", "required": ["request_id", "query", "version", "k", "offset",
                                                                "took_ms", "total_candidates", "facets", "hits"],
                                 "properties": {
                    "request_id": {"type": "string", "description": "names this list in the impression log; send it back on events"}, "query": {"type": "string"}, "version": {"type": "string"}, "k": {"type": "integer"},
                    "offset": {"type": "integer"}, "took_ms": {"type": "number"},
                    "total_candidates": {"type": "integer", "description":
                                         "candidate rows after every filter: about how many results paging reaches"},
                    "facets": _ref("Facets"),
                    "hits": {"type": "array", "items": _ref("Hit")},
                    "sponsored": {"type": "array", "items": _ref("SponsoredHit"), "description":
                                  "sponsored results of the first page, each at its display position: extra slots, "
                                  "the organic hits are unchanged"}}},
                "Facets": {"type": "object", "required": ["category", "price"], "description":
                    "Over the query's candidate rows (BM25 matches and the candidate_pool nearest by meaning) "
                    "found without the category and price filters; the in_stock filter applies.",
                    "properties": {
                        "category": {"type": "array", "maxItems": 20, "description":
                            "counts of those rows within the price filter, one level below the `category` filter "
                            "(its children); without one, at the first depth where the rows' categories differ. "
                            "By count, descending, then path",
                            "items": {"type": "object", "required": ["path", "name", "count"], "properties": {
                                "path": {"type": "string", "description": "usable as the `category` filter"},
                                "name": {"type": "string"}, "count": {"type": "integer"}}}},
                        "price": {"type": "object", "required": ["min", "max"], "description":
                                  "over those rows with a price, ignoring the price filter; both null when none "
                                  "has one", "properties": {"min": _NULLABLE_NUMBER, "max": _NULLABLE_NUMBER}}}},
                "Suggestions": {"type": "object", "required": ["q", "version", "suggestions"], "properties": {
                    "q": {"type": "string", "description": "the q given, unchanged"}, "version": {"type": "string"},
                    "suggestions": {"type": "array", "items": {"type": "object", "required": ["text", "kind"],
                                                                "properties": {
                        "text": {"type": "string"}, "kind": {"type": "string", "enum": ["category", "item"]},
                        "id": {"type": "string", "description": "items only"},
                        "category": {"type": "string", "description":
                                     "the category path (of a category: its own, usable as the search `category` filter)"},
                        "count": {"type": "integer", "description": "categories only: items under it"}}}}}},
                "EventStats": {"type": "object", "required": ["days", "since", "events_per_day", "totals", "events",
                                                              "shoppers", "surfaces"], "properties": {
                    "days": {"type": "integer"}, "since": {"type": "string", "format": "date"},
                    "events_per_day": {"type": "array", "items": {"type": "object",
                                                                  "required": ["day", "type", "count"], "properties": {
                        "day": {"type": "string", "format": "date"}, "type": {"type": "string"},
                        "count": {"type": "integer"}}}},
                    "totals": {**_COUNTS, "description": "events per type, every type present"},
                    "events": {"type": "integer"},
                    "shoppers": {"type": "integer", "description": "distinct users with an event in the window"},
                    "surfaces": {"type": "array", "description": "per surface, most lists first (README, "
                                 "\"Attribution\"); rates are shares of shown items", "items": _ref("SurfaceStats")},
                    "impression_log": {"type": "object", "description": "with impression logging: how this process's "
                                       "impressions reach the store (writer process or thread), whether the writer "
                                       "runs, the bytes spooled or lists queued", "properties": {
                        "writer": {"type": "string", "enum": ["process", "thread"]},
                        "writer_alive": {"type": "boolean"}, "spooled_bytes": {"type": ["integer", "null"]},
                        "queued": {"type": "integer"}}}}},
                "SurfaceStats": {"type": "object", "required": [
                    "surface", "lists", "shown", "clicks", "add_to_cart", "purchases", "ctr", "add_to_cart_rate",
                    "conversion", "by_position"], "properties": {
                    "surface": {"type": "string"}, "lists": {"type": "integer"},
                    "shown": {"type": "integer", "description": "shown items: the lists' lengths summed"},
                    "clicks": {"type": "integer", "description": "shown items with a click attributed"},
                    "add_to_cart": {"type": "integer", "description": "shown items with an add_to_cart attributed"},
                    "purchases": {"type": "integer", "description": "shown items with a purchase attributed"},
                    "ctr": {"type": "number"}, "add_to_cart_rate": {"type": "number"}, "conversion": {"type": "number"},
                    "explored_lists": {"type": "integer", "description": "lists an exploring policy made"},
                    "explored": {"type": "integer", "description": "shown items placed off the ranking's order"},
                    "exploration_share": {"type": "number", "description": "explored / shown"},
                    "by_position": {"type": "array", "description": "positions 1..20 that were shown", "items": {
                        "type": "object", "required": ["position", "shown", "clicks", "ctr"], "properties": {
                            "position": {"type": "integer", "minimum": 1}, "shown": {"type": "integer"},
                            "clicks": {"type": "integer"}, "ctr": {"type": "number"}}}}}},
                "Variant": {"type": "object", "required": ["name", "policy", "share"], "properties": {
                    "name": {"type": "string"},
                    "policy": {"type": "string", "description":
                               "blend, ranker (the surface's published ranker) or ranker:<version>"},
                    "share": {"type": "number",
                              "description": "of the shoppers (a split); 0.5 each in an interleave"}}},
                "Experiment": {"type": "object", "required": ["name", "surface", "kind", "state", "created_at",
                                                              "stopped_at", "winner", "variants"], "properties": {
                    "name": {"type": "string"}, "surface": {"type": "string", "enum": ["search", "recommend"]},
                    "kind": {"type": "string", "enum": ["split", "interleave"]},
                    "state": {"type": "string", "enum": ["running", "stopped"]},
                    "created_at": {"type": "number", "description": "epoch seconds"},
                    "stopped_at": {**_NULLABLE_NUMBER, "description": "epoch seconds; null while running"},
                    "winner": {"type": ["string", "null"], "description": "the chosen variant's name"},
                    "variants": {"type": "array", "items": _ref("Variant")}}},
                "ExperimentReport": {"allOf": [_ref("Experiment"), {"type": "object", "required": ["stats"],
                                                                    "properties": {"stats": _ref("ExperimentStats")}}]},
                "ExperimentList": {"type": "object", "required": ["experiments"], "properties": {
                    "experiments": {"type": "array", "items": _ref("ExperimentReport")}}},
                "Rate": {"type": "object", "required": ["value", "low", "high", "deff"], "description":
                         "a share of shown items with its 95% Wilson interval at the effective sample size (shown "
                         "items / deff, the design effect of clustering by shopper)", "properties": {
                    "value": {"type": "number"}, "low": {"type": "number"}, "high": {"type": "number"},
                    "deff": {"type": "number", "minimum": 1}}},
                "ExperimentStats": {"type": "object", "required": ["experiment", "since", "until", "window_minutes",
                                                                   "variants", "interleaving"], "properties": {
                    "experiment": {"type": "string"},
                    "since": {"type": "number", "description": "epoch seconds: the experiment's start"},
                    "until": {**_NULLABLE_NUMBER, "description": "its stop; null while running (up to now)"},
                    "window_minutes": {"type": "number", "description": "the attribution window"},
                    "variants": {"type": "array", "items": {"type": "object", "required": [
                        "variant", "policy", "lists", "shoppers", "shown", "clicks", "add_to_cart", "purchases", "ctr",
                        "add_to_cart_rate", "conversion"], "properties": {
                        "variant": {"type": "string"}, "policy": {"type": "string"},
                        "lists": {"type": "integer", "description": "lists served (an interleave: all of them)"},
                        "shoppers": {"type": "integer", "description": "distinct shoppers (a list without one: one)"},
                        "shown": {"type": "integer", "description": "shown items (an interleave: of its team)"},
                        "clicks": {"type": "integer"}, "add_to_cart": {"type": "integer"},
                        "purchases": {"type": "integer"}, "ctr": _ref("Rate"), "add_to_cart_rate": _ref("Rate"),
                        "conversion": _ref("Rate"),
                        "ope": {"type": ["object", "null"], "description": "the newest off-policy estimate of this "
                                "policy on logged traffic (vitrine eval ope --policy ... --record), or null"}}}},
                    "interleaving": {"oneOf": [{"type": "null"}, {
                        "type": "object", "description": "interleave only: lists won by each variant (a: the "
                        "first, b: the second); preference = (wins_b - wins_a) / (wins_a + wins_b + ties)",
                        "required": ["wins_a", "wins_b", "ties", "no_clicks", "preference", "low", "high", "p_value"],
                        "properties": {
                            "wins_a": {"type": "integer"}, "wins_b": {"type": "integer"}, "ties": {"type": "integer"},
                            "no_clicks": {"type": "integer", "description": "lists without a click (left out)"},
                            "preference": {"type": "number", "minimum": -1, "maximum": 1},
                            "low": {"type": "number"}, "high": {"type": "number"},
                            "p_value": {"type": "number", "description": "two-sided sign test, ties left out"}}}]}}},
                "Campaign": {"type": "object", "required": [
                    "id", "advertiser", "name", "items", "bid", "daily_budget", "start", "end", "targeting", "state",
                    "frequency_cap", "created_at", "updated_at", "spend_today"], "properties": {
                    "id": {"type": "string"}, "advertiser": {"type": "string"}, "name": {"type": "string"},
                    "items": {"type": "array", "items": {"type": "string"}},
                    "bid": {"type": "integer", "minimum": 1, "description": "per click, minor units (cents)"},
                    "daily_budget": {"type": "integer", "minimum": 1, "description": "minor units per UTC day"},
                    "start": {"type": "string", "description": "ISO 8601, UTC"},
                    "end": {"type": ["string", "null"]}, "targeting": _ref("Targeting"),
                    "state": {"type": "string", "enum": ["active", "paused"]},
                    "frequency_cap": {"type": ["integer", "null"],
                                      "description": "impressions per shopper and UTC day"},
                    "created_at": {"type": "string"}, "updated_at": {"type": "string"},
                    "spend_today": {"type": "integer", "description": "minor units, this UTC day"}}},
                "AdReport": {"type": "object", "required": ["rows"], "properties": {"rows": {"type": "array", "items": {
                    "type": "object", "required": ["campaign_id", "day", "impressions", "clicks", "ctr", "spend",
                                                   "avg_cpc", "purchases", "revenue", "roas"], "properties": {
                        "campaign_id": {"type": "string"}, "day": {"type": "string"},
                        "impressions": {"type": "integer"}, "clicks": {"type": "integer"}, "ctr": {"type": "number"},
                        "spend": {"type": "integer", "description": "minor units"},
                        "avg_cpc": {"type": "number", "description": "minor units"},
                        "purchases": {"type": "integer"},
                        "revenue": {"type": "integer", "description": "minor units"},
                        "roas": {"type": "number"}}}}}},
                "AdHourly": {"type": "object", "required": ["campaign_id", "day", "daily_budget", "hours"],
                             "properties": {
                    "campaign_id": {"type": "string"}, "day": {"type": "string"}, "daily_budget": {"type": "integer"},
                    "hours": {"type": "array", "items": {"type": "object", "required": ["hour", "clicks", "spend"],
                                                         "properties": {
                        "hour": {"type": "integer"}, "clicks": {"type": "integer"}, "spend": {"type": "integer"}}}}}},
                "AdCharge": {"type": "object", "required": ["charged", "price", "spend", "reason"], "properties": {
                    "charged": {"type": "boolean"}, "price": {"type": "integer", "description": "minor units"},
                    "spend": {"type": "integer", "description": "the campaign's spend today, minor units"},
                    "reason": {"type": ["string", "null"], "enum": [None, "duplicate", "repeat_click", "budget"],
                               "description": "why nothing was charged"}}},
                "SponsoredHit": {"type": "object", "required": [
                    "id", "title", "category", "brand", "price", "position", "sponsored", "campaign_id", "relevance",
                    "ad"], "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "category": {"type": "string"},
                    "brand": {"type": "string"}, "price": _NULLABLE_NUMBER,
                    "position": {"type": "integer", "minimum": 1, "description": "display position on the page"},
                    "sponsored": {"type": "boolean", "const": True}, "campaign_id": {"type": "string"},
                    "relevance": {"type": "number", "description": "vector score against the query"},
                    "ad": {"type": "string", "description": "send it to POST /v1/ads/clicks when clicked"}}},
                "CampaignList": {"type": "object", "required": ["day", "campaigns"], "properties": {
                    "day": {"type": "string"}, "campaigns": {"type": "array", "items": _ref("Campaign")}}},
                "Targeting": {"type": "object", "properties": {
                    "keywords": {"type": "array", "items": {"type": "object", "required": ["text", "match"],
                                                            "properties": {
                        "text": {"type": "string"}, "match": {"type": "string", "enum": ["exact", "phrase", "broad"]}}}},
                    "categories": {"type": "array", "items": {"type": "string"}},
                    "similar_to": {"type": "array", "items": {"type": "string"}},
                    "audience": {"type": "object", "properties": {
                        "categories": {"type": "array", "items": {"type": "string"}}}}}},
                "CampaignRequest": {"type": "object", "required": ["advertiser", "items", "bid", "daily_budget"],
                                    "properties": {
                    "id": _CAMPAIGN_ID, "advertiser": {"type": "string"}, "name": {"type": "string"},
                    "items": {"type": "array", "items": {"type": "string"}},
                    "bid": {"type": "integer", "minimum": 1}, "daily_budget": {"type": "integer", "minimum": 1},
                    "start": {"type": ["string", "number"]}, "end": {"type": ["string", "number", "null"]},
                    "targeting": _ref("Targeting"), "state": {"type": "string", "enum": ["active", "paused"]},
                    "frequency_cap": {"type": ["integer", "null"]}}},
                "CampaignPatch": {"type": "object", "properties": {
                    "name": {"type": "string"}, "items": {"type": "array", "items": {"type": "string"}},
                    "bid": {"type": "integer", "minimum": 1}, "daily_budget": {"type": "integer", "minimum": 1},
                    "start": {"type": ["string", "number"]}, "end": {"type": ["string", "number", "null"]},
                    "targeting": _ref("Targeting"), "state": {"type": "string", "enum": ["active", "paused"]},
                    "frequency_cap": {"type": ["integer", "null"]}}},
                "ExperimentRequest": {"type": "object", "required": ["name", "surface", "variants"],
                                      "additionalProperties": False, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
                    "surface": {"type": "string", "enum": ["search", "recommend"]},
                    "kind": {"type": "string", "enum": ["split", "interleave"], "default": "split",
                             "description": "interleave: search only, exactly 2 variants"},
                    "variants": {"type": "array", "minItems": 2, "maxItems": 10, "items": {
                        "type": "object", "required": ["name", "policy"], "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$",
                                     "description": "unique in the experiment; not 'interleaved'"},
                            "policy": {"type": "string", "description":
                                       "blend, ranker (the surface's published ranker) or ranker:<version>"},
                            "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description":
                                      "of the shoppers; give every variant one (summing to 1) or none (equal)"}}}}}},
                "WinnerRequest": {"type": "object", "required": ["variant"], "additionalProperties": False,
                                  "properties": {"variant": {"type": "string", "description": "a variant's name"}}},
                "Answers": {"type": "object", "required": ["question", "item_id", "answers", "no_answer", "min_score",
                                                           "candidates"], "properties": {
                    "question": {"type": "string"}, "item_id": {"type": ["string", "null"]},
                    "answers": {"type": "array", "items": {"type": "object", "required": [
                        "item_id", "answer", "question", "score", "date", "source"], "properties": {
                        "item_id": {"type": "string"}, "answer": {"type": "string"},
                        "question": {"type": ["string", "null"], "description": "the past question it answered"},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "date": {"type": ["string", "null"], "description": "answer date, YYYY-MM-DD"},
                        "source": {"type": "string", "description": "past answer, or catalog attribute 'KEY'"},
                        "field": {"type": "string"}}}},
                    "no_answer": {"type": "boolean"}, "message": {"type": "string"},
                    "min_score": {"type": "number"}, "candidates": {"type": "integer"}}},
                "Similar": {"type": "object", "required": ["request_id", "item_id", "version", "similar",
                                                           "also_bought"],
                            "properties": {
                    "request_id": {"type": "string", "description": "names this list in the impression log; send it back on events"}, "item_id": {"type": "string"}, "version": {"type": "string"},
                    "similar": {"type": "array", "items": _ref("Hit")},
                    "sponsored": {"type": "array", "items": _ref("SponsoredHit"),
                                  "description": "sponsored items of the strip, at their display positions"},
                    "also_bought": {"type": "array", "items": {"type": "object", "required": ["id", "title", "score"],
                                                               "properties": {
                        "id": {"type": "string"}, "title": {"type": "string"}, "score": {"type": "number"}}}}}},
                "Product": {"type": "object", "required": ["id", "title", "description", "category", "brand", "price",
                                                           "in_stock", "url", "image_url", "created_at", "attributes"],
                            "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
                    "category": {"type": "string"}, "brand": {"type": "string"},
                    "price": _NULLABLE_NUMBER, "in_stock": {"type": ["boolean", "null"]},
                    "url": {"type": "string"}, "image_url": {"type": "string"},
                    "created_at": {"type": ["string", "null"], "format": "date-time",
                                   "description": "when the shop listed the item (the catalog's created_at), UTC"},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "ItemDetail": {"allOf": [_ref("Product"), {"type": "object", "required": ["stats"], "properties": {
                    "stats": _ref("ItemStats")}}]},
                "ItemStats": {"type": "object", "required": ["item_id", "events", "counts", "ctr", "conversion",
                                                             "rating_avg", "popularity"], "properties": {
                    "item_id": {"type": "string"}, "events": {"type": "integer"}, "counts": _COUNTS,
                    "ctr": {**_NULLABLE_NUMBER, "description": "clicks per view; null without views"},
                    "conversion": {**_NULLABLE_NUMBER, "description": "purchases per view; null without views"},
                    "rating_avg": {**_NULLABLE_NUMBER, "description": "null without ratings"},
                    "popularity": {"type": "number"}, "popularity_half_life_s": {"type": "number"}}},
                "UserFeatures": {"type": "object", "required": ["user_id", "events", "counts", "ctr", "conversion",
                                                                "first_event_at", "last_event_at", "categories"],
                                 "properties": {
                    "user_id": {"type": "string"}, "events": {"type": "integer"}, "counts": _COUNTS,
                    "ctr": _NULLABLE_NUMBER, "conversion": _NULLABLE_NUMBER,
                    "first_event_at": {**_NULLABLE_NUMBER, "description": "epoch seconds; null without events"},
                    "last_event_at": {**_NULLABLE_NUMBER, "description": "epoch seconds; null without events"},
                    "categories": {"type": "object", "description": "events per category: top level and leaf",
                                   "additionalProperties": {"type": "object",
                                                            "additionalProperties": {"type": "integer"}}}}},
                "DeletedUser": {"type": "object", "required": ["user_id", "deleted_events", "receipt", "removed"],
                                "properties": {
                    "user_id": {"type": "string"}, "deleted_events": {"type": "integer"},
                    "receipt": {"type": "string"}, "deleted_at": {"type": "number"},
                    "deleted_at_iso": {"type": "string"},
                    "removed": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "tables": {"type": "object", "additionalProperties": {"type": "integer"}}}},
                "DeletionCheck": {"type": "object", "required": ["receipt", "verified", "remaining"], "properties": {
                    "receipt": {"type": "string"}, "deleted_at": {"type": "number"},
                    "deleted_at_iso": {"type": "string"},
                    "removed": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "tables": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "verified": {"type": "boolean"}, "live_models_rebuilt": {"type": "boolean"},
                    "remaining": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "checked_at": {"type": "number"}}},
                "Consent": {"type": "object", "required": ["user_id", "personalization"], "properties": {
                    "user_id": {"type": "string"}, "personalization": {"type": "boolean"},
                    "updated_at": {"type": "number"}, "source": {"type": "string"}}},
                "ConsentRequest": {"type": "object", "required": ["personalization"], "properties": {
                    "personalization": {"type": "boolean"}}},
                "Event": {"type": "object", "required": ["event_id", "user_id", "type"], "additionalProperties": False,
                          "description": "`item_id` is required for every type but search, which requires `query`; "
                                         "a rating needs `value` in 1..5. An invalid event is listed in `rejected`",
                          "properties": {
                    "event_id": {"type": ["string", "integer"], "maxLength": 128},
                    "user_id": {"type": ["string", "integer"], "maxLength": 128},
                    "type": {"type": "string", "enum": ["view", "click", "add_to_cart", "remove_from_cart",
                                                       "purchase", "search", "rating"]},
                    "item_id": {"type": ["string", "integer"], "maxLength": 128}, "value": {"type": "number"},
                    "query": {"type": "string", "maxLength": 1000},
                    "timestamp": {"type": ["number", "string"], "description":
                                  "epoch seconds or ISO-8601 (no zone: UTC); default: now"},
                    "request_id": {"type": ["string", "integer"], "maxLength": 128, "description":
                                   "the request_id of the list the item was shown in"},
                    "position": {"type": "integer", "minimum": 1, "maximum": 10000, "description":
                                 "the item's 1-based position in that list"},
                    "personalization": {"type": "boolean", "description":
                                        "the shopper's consent to personalization, recorded from this event on"}}},
                "EventBatch": {"oneOf": [
                    _ref("Event"),
                    {"type": "array", "maxItems": 1000, "items": _ref("Event")},
                    {"type": "object", "required": ["events"], "properties": {
                        "events": {"type": "array", "maxItems": 1000, "items": _ref("Event")}}}]},
                "IngestResult": {"type": "object", "required": ["accepted", "duplicates", "rejected"], "properties": {
                    "accepted": {"type": "array", "items": {"type": "string"}},
                    "duplicates": {"type": "array", "items": {"type": "string"}},
                    "rejected": {"type": "array", "items": {"type": "object",
                                                            "required": ["index", "event_id", "field", "message"],
                                                            "properties": {
                        "index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
                "SessionRecommendationRequest": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": ["array", "string"], "items": {"type": "string"},
                              "description": "recent item ids, oldest first (or one comma-separated string)"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 100},
                    "category": {"type": "string"}, "min_price": {"type": "number"}, "max_price": {"type": "number"},
                    "in_stock": {"type": "boolean"},
                    "exclude": {"type": ["array", "string"], "items": {"type": "string"},
                                "description": "item ids to leave out (or one comma-separated string)"},
                    "diversity": {"type": "number", "minimum": 0, "maximum": 1},
                    "strategy": {"type": "string", "enum": list(STRATEGIES)}}},
                "Recommendations": {"type": "object", "required": ["request_id", "user_id", "version", "k",
                                                                   "recommendations"],
                                    "properties": {
                    "request_id": {"type": "string", "description": "names this list in the impression log; send it back on events"}, "user_id": {"type": ["string", "null"], "description": "null for an anonymous session"},
                    "version": {"type": "string"}, "k": {"type": "integer"},
                    "sponsored": {"type": "array", "items": _ref("SponsoredHit"),
                                  "description": "sponsored items of the list, at their display positions"},
                    "recommendations": {"type": "array", "items": {"type": "object", "required": [
                        "id", "title", "category", "brand", "price", "score", "reason", "source", "because_item",
                        "score_parts"], "properties": {
                        "id": {"type": "string"}, "title": {"type": "string"}, "category": {"type": "string"},
                        "brand": {"type": "string"}, "price": _NULLABLE_NUMBER, "score": {"type": "number"},
                        "reason": {"type": "string"},
                        "source": {"type": "string", "enum": ["content", "cooccurrence", "popular"]},
                        "because_item": {"type": ["string", "null"]},
                        "score_parts": {"type": "object", "additionalProperties": {"type": "number"}}}}}}},
                "Info": {"type": "object", "required": ["version", "items"], "properties": {
                    "version": {"type": "string"}, "items": {"type": "integer"},
                    "created_at": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]},
                    "dims": {"type": ["integer", "null"]}, "encoder": {"type": ["string", "null"]},
                    "rankers": {"type": "object", "description": "per surface (recommend, search), the learned "
                                "ranker served, or null when the blend / fused order serves",
                                "additionalProperties": {"type": ["object", "null"]}},
                    "warming": {"type": "array", "items": {"type": "string",
                                "enum": ["analytics", "impression_writer", "page_cache", "suggestions"]},
                                "description": "background warm-ups this process still runs; it answers "
                                "meanwhile, more slowly"}}},
                "Versions": {"type": "object", "required": ["current", "served", "on_disk", "manifest"],
                             "properties": {
                    "current": {"type": ["string", "null"], "description": "the served version"},
                    "served": {"type": "array", "items": {"type": "string"},
                               "description": "the history a rollback walks back, oldest first, current last"},
                    "on_disk": {"type": "array", "items": {"type": "string"}},
                    "manifest": {"type": ["object", "null"], "description": "the served version's, whole"}}},
                "Rollback": {"type": "object", "required": ["previous", "current"], "properties": {
                    "previous": {"type": "string"}, "current": {"type": "string"}}},
                "RebuildRequest": {"type": "object", "properties": {
                    "catalog": {"type": "string", "maxLength": 4096, "description":
                                "catalog file path on the server, inside the catalog directories (catalog_dirs); "
                                "default: the served version's"},
                    "full": {"type": "boolean", "default": False}}},
                "JobStarted": {"type": "object", "required": ["job", "state", "status_url"], "properties": {
                    "job": {"type": "string"}, "state": {"type": "string", "enum": ["queued"]},
                    "status_url": {"type": "string", "description": "GET it for the progress"}}},
                "Job": {"type": "object", "required": ["job", "state"], "properties": {
                    "job": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
                    "full": {"type": "boolean"}, "created_at": {"type": "number"}, "pid": {"type": "integer"},
                    "started_at": {"type": "number"}, "finished_at": {"type": "number"},
                    "stage": {"type": "string"}, "done": {"type": "integer"}, "total": {"type": "integer"},
                    "from_cache": {"type": "integer"}, "items_per_s": {"type": "number"}, "eta_s": {"type": "number"},
                    "version": {"type": "string"}, "error": {"type": "string"},
                    "summary": {"type": "array", "items": {"type": "string"}}}},
            },
        },
    }
