"""The OpenAPI description of /v1/admin/analytics (issue 12), merged into web/openapi.py's document."""
from __future__ import annotations

from typing import Any

from web.openapi import _ADMIN, _AUTH, _json, _q, _ref, _responses

REPORTS = ["funnel", "search", "cohorts", "rfm", "movers"]
_CELL = {"type": ["string", "number", "integer", "null"]}
_TABLE = {"type": "object", "required": ["columns", "rows"], "properties": {
    "columns": {"type": "array", "items": {"type": "string"}},
    "rows": {"type": "array", "items": {"type": "array", "items": _CELL}}}}
_BUDGET = {"type": "object", "required": ["day", "key", "daily_budget", "spent", "remaining"], "properties": {
    "day": {"type": "string"}, "key": {"type": "string"}, "daily_budget": {"type": "number"},
    "spent": {"type": "number"}, "remaining": {"type": "number"}, "requests": {"type": "integer"},
    "history": {"type": "array", "items": {"type": "object"}}, "sensitivity": {"type": "object"}}}
SCHEMAS: dict[str, Any] = {
    "AnalyticsReport": {"type": "object", "required": ["report", "from", "to", "dp", "tables", "chart", "notes"],
                        "properties": {
        "report": {"type": "string", "enum": REPORTS}, "from": {"type": "string"}, "to": {"type": "string"},
        "dp": {"type": ["object", "null"], "description": "with dp_epsilon: epsilon, sensitivity (L1, after the "
               "stated clip), noise_scale = sensitivity / epsilon, noise_variance, clip, budget"},
        "tables": {"type": "object", "additionalProperties": _TABLE},
        "chart": {"type": "object"}, "notes": {"type": "array", "items": {"type": "string"}}}},
    "PrivacyBudget": _BUDGET,
}
_EXHAUSTED = {"description": "the key's daily privacy budget (dp_daily_budget epsilon) is spent, or too many "
                             "wrong keys from this address", **_json(_ref("Error"))}


def paths() -> dict[str, Any]:
    date = {"type": "string", "format": "date"}
    params = [
        {"name": "report", "in": "path", "required": True, "schema": {"type": "string", "enum": REPORTS},
         "description": "funnel, search, cohorts, rfm or movers"},
        _q("from", date, "first UTC day, 1970-01-01..2999-12-31 (default: 29 days before `to`); at most 731 days"),
        _q("to", date, "last UTC day, inclusive (default: today)"),
        _q("category", {"type": "string", "maxLength": 500}, "funnel, rfm, movers: a category path and below"),
        _q("surface", {"type": "string", "enum": ["search", "recommend", "recommend_session", "similar", "for_you",
                                                  "trending", "direct"]},
           "funnel, rfm, movers: events from lists of this surface (direct: no list)"),
        _q("by", {"type": "string", "enum": ["day", "category", "surface"], "default": "day"}, "funnel: grouping"),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}, "search, movers: rows per table"),
        _q("weeks", {"type": "integer", "minimum": 1, "maximum": 52, "default": 8}, "cohorts: weeks followed"),
        _q("dp_epsilon", {"type": "number", "minimum": 0.01, "maximum": 10},
           "answer with Laplace noise for epsilon-DP (search queries: (epsilon, 1e-6)); spends the key's budget"),
        _q("format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, "json or csv"),
        _q("table", {"type": "string"}, "with format=csv: which table (default: the first)"),
    ]
    ok = {"description": "OK", "content": {"application/json": {"schema": _ref("AnalyticsReport")},
                                           "text/csv": {"schema": {"type": "string"}}}}
    return {
        "/v1/admin/analytics/{report}": {"get": {
            "summary": "Behaviour analytics: funnel (by day, category or surface), search (top, zero-result and "
                       "no-click queries, CTR by position, refinements), cohorts (weekly retention of new shoppers), "
                       "rfm (segments) or movers (demand change against the previous period)",
            "security": _ADMIN, "parameters": params,
            "responses": {**_responses(ok, "400", "401", "403", "404", "414", "503"), "429": _EXHAUSTED},
        }},
        "/v1/admin/analytics/privacy": {"get": {
            "summary": "The privacy budget of this key: epsilon spent and left today (UTC), the last 7 days, and "
                       "each report's sensitivity",
            "security": _ADMIN,
            "responses": _responses({"description": "OK", **_json(_ref("PrivacyBudget"))}, *_AUTH, "414", "503"),
        }},
    }
