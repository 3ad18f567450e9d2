"""The OpenAPI 3.1 description of every route (served at /v1/openapi.json; a test checks coverage)."""
from __future__ import annotations

from typing import Any


def _q(name: str, schema: dict[str, Any], desc: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": desc}


def _path(name: str, desc: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": desc}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(ref: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, **_json(ref)}


_ERR = {"description": "error", **_json("Error")}
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
_ADMIN_ERRORS = {"401": _ERR, "403": _ERR}
_INGEST: list[dict[str, list[str]]] = [{"ingest": []}]

_HIT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "category": {"type": "string"},
        "brand": {"type": "string"}, "price": {"type": ["number", "null"]},
        "in_stock": {"type": ["boolean", "null"]}, "score": {"type": "number"},
        "score_parts": {"type": "object", "properties": {"bm25": {"type": "number"}, "vector": {"type": "number"}}},
    },
}


def openapi_document() -> dict[str, Any]:
    k = _q("k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "number of results (capped by max_k)")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vitrine API", "version": "1"},
        "paths": {
            "/v1/search": {"get": {
                "summary": "Hybrid (BM25 + vector) product search with filters and paging",
                "parameters": [
                    _q("q", {"type": "string", "maxLength": 500}, "the search box text", True), k,
                    _q("offset", {"type": "integer", "minimum": 0, "default": 0}, "results to skip"),
                    _q("category", {"type": "string"}, "category path prefix, 'A > B'"),
                    _q("min_price", {"type": "number", "minimum": 0}, "lowest price (excludes unpriced items)"),
                    _q("max_price", {"type": "number", "minimum": 0}, "highest price (excludes unpriced items)"),
                    _q("in_stock", {"type": "boolean"}, "true: only items not marked out of stock"),
                    _q("user", {"type": "string"}, "re-rank for this shopper's profile"),
                    _q("personalize", {"type": "number", "minimum": 0, "maximum": 1},
                       "personalization strength with `user` (0 = off; default from config)"),
                ],
                "responses": {"200": _ok("SearchResult"), "400": _ERR, "503": _ERR},
            }},
            "/v1/suggest": {"get": {
                "summary": "Type-ahead suggestions: category names and item titles matching the typed text. "
                           "Earlier words match whole words, the last one as a prefix; words of 4+ characters "
                           "may have one typo, of 8+ two. Exact and prefix matches first, then categories "
                           "(more items first), then shorter texts",
                "parameters": [
                    _q("q", {"type": "string", "minLength": 1, "maxLength": 100}, "the text typed so far", True),
                    _q("k", {"type": "integer", "minimum": 1, "maximum": 20, "default": 8}, "number of suggestions"),
                ],
                "responses": {"200": _ok("Suggestions"), "400": _ERR, "503": _ERR},
            }},
            "/v1/items/{item_id}": {"get": {
                "summary": "One catalog item",
                "parameters": [_path("item_id", "the catalog id")],
                "responses": {"200": _ok("Product"), "404": _ERR, "503": _ERR},
            }},
            "/v1/items/{item_id}/similar": {"get": {
                "summary": "Nearest neighbours of the item (itself and exact-title duplicates excluded)",
                "parameters": [_path("item_id", "the catalog id"), k,
                               _q("same_category", {"type": "boolean", "default": False}, "only the item's category")],
                "responses": {"200": _ok("Similar"), "400": _ERR, "404": _ERR, "503": _ERR},
            }},
            "/v1/info": {"get": {"summary": "Served version, versions on disk and the manifest",
                                 "responses": {"200": _ok("Info"), "503": _ERR}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/healthz": {"get": {"summary": "Liveness and the published version",
                                 "responses": {"200": {"description": "OK"}}}},
            "/v1/events": {"post": {
                "summary": "Record shopper events (one, a list, or {events: [...]}; at most 1,000). "
                           "Idempotent on event_id; durable before the answer",
                "security": _INGEST,
                "requestBody": {"required": True, **_json("EventBatch")},
                "responses": {"200": _ok("IngestResult"), "400": _ERR, **_ADMIN_ERRORS},
            }},
            "/v1/users/{user_id}/recommendations": {"get": {
                "summary": "Blended recommendations (content, co-occurrence, trending) with a reason each; "
                           "cold-start answers for an unknown shopper",
                "parameters": [_path("user_id", "the shop's user id"), k,
                               _q("category", {"type": "string"}, "category path prefix"),
                               _q("min_price", {"type": "number"}, "lowest price"),
                               _q("max_price", {"type": "number"}, "highest price"),
                               _q("exclude", {"type": "string"}, "comma-separated item ids to leave out"),
                               _q("diversity", {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
                                  "MMR diversity: 0 = by score only")],
                "responses": {"200": _ok("Recommendations"), "400": _ERR, "503": _ERR},
            }},
            "/v1/recommendations": {"post": {
                "summary": "Recommendations for an anonymous session from its recent items",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items"], "properties": {
                        "items": {"type": "array", "items": {"type": "string"}}, "k": {"type": "integer"},
                        "category": {"type": "string"}, "exclude": {"type": "array", "items": {"type": "string"}},
                        "diversity": {"type": "number"}}}}}},
                "responses": {"200": _ok("Recommendations"), "400": _ERR, "503": _ERR},
            }},
            "/v1/users/{user_id}": {
                "get": {"summary": "A shopper's features (zeros for an unknown shopper)",
                        "parameters": [_path("user_id", "the shop's user id")],
                        "responses": {"200": {"description": "OK"}}},
                "delete": {"summary": "Delete the shopper's events, features and profile", "security": _ADMIN,
                           "parameters": [_path("user_id", "the shop's user id")],
                           "responses": {"200": {"description": "OK"}, **_ADMIN_ERRORS}},
            },
            "/v1/admin/rebuild": {"post": {
                "summary": "Start a background rebuild (re-embeds only changed items unless full)",
                "security": _ADMIN,
                "requestBody": {"required": False, **_json("RebuildRequest")},
                "responses": {"202": _ok("Job", "started"), "400": _ERR, "409": _ERR, **_ADMIN_ERRORS},
            }},
            "/v1/admin/rebuild/{job}": {"get": {
                "summary": "Progress of a rebuild job", "security": _ADMIN,
                "parameters": [_path("job", "job id from POST /v1/admin/rebuild")],
                "responses": {"200": _ok("Job"), "404": _ERR, **_ADMIN_ERRORS},
            }},
            "/v1/admin/stats": {"get": {
                "summary": "Event counts per UTC day and type over the last `days` calendar days (today "
                           "included, by event timestamp), totals per type, events and distinct shoppers",
                "security": _ADMIN,
                "parameters": [_q("days", {"type": "integer", "minimum": 1, "maximum": 366, "default": 30},
                                  "days to cover, today included")],
                "responses": {"200": _ok("EventStats"), "400": _ERR, **_ADMIN_ERRORS},
            }},
            "/v1/admin/rollback": {"post": {
                "summary": "Point the served version back at the previous one", "security": _ADMIN,
                "responses": {"200": {"description": "OK"}, "404": _ERR, **_ADMIN_ERRORS},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "admin key"},
                                "ingest": {"type": "http", "scheme": "bearer", "description": "ingest key"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
                "Hit": _HIT,
                "SearchResult": {"type": "object", "properties": {
                    "query": {"type": "string"}, "version": {"type": "string"}, "k": {"type": "integer"},
                    "offset": {"type": "integer"}, "took_ms": {"type": "number"},
                    "total_candidates": {"type": "integer", "description":
                                         "candidate rows after every filter: about how many results paging reaches"},
                    "facets": {"$ref": "#/components/schemas/Facets"},
                    "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}}}},
                "Facets": {"type": "object", "description":
                    "Over the query's candidate rows (BM25 matches and the candidate_pool nearest by meaning) "
                    "found without the category and price filters; the in_stock filter applies.",
                    "properties": {
                        "category": {"type": "array", "maxItems": 20, "description":
                            "counts of those rows within the price filter, one level below the `category` filter "
                            "(its children); without one, at the first depth where the rows' categories differ. "
                            "By count, descending, then path",
                            "items": {"type": "object", "properties": {
                                "path": {"type": "string", "description": "usable as the `category` filter"},
                                "name": {"type": "string"}, "count": {"type": "integer"}}}},
                        "price": {"type": "object", "description": "over those rows with a price, ignoring the "
                                  "price filter; null when none has one", "properties": {
                                      "min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]}}}}},
                "Suggestions": {"type": "object", "properties": {
                    "q": {"type": "string", "description": "the q given, unchanged"}, "version": {"type": "string"},
                    "suggestions": {"type": "array", "items": {"type": "object", "required": ["text", "kind"],
                                                                "properties": {
                        "text": {"type": "string"}, "kind": {"type": "string", "enum": ["category", "item"]},
                        "id": {"type": "string", "description": "items only"},
                        "category": {"type": "string", "description":
                                     "the category path (of a category: its own, usable as the search `category` filter)"},
                        "count": {"type": "integer", "description": "categories only: items under it"}}}}}},
                "EventStats": {"type": "object", "properties": {
                    "days": {"type": "integer"}, "since": {"type": "string", "format": "date"},
                    "events_per_day": {"type": "array", "items": {"type": "object", "properties": {
                        "day": {"type": "string", "format": "date"}, "type": {"type": "string"},
                        "count": {"type": "integer"}}}},
                    "totals": {"type": "object", "additionalProperties": {"type": "integer"},
                               "description": "events per type, every type present"},
                    "events": {"type": "integer"},
                    "shoppers": {"type": "integer", "description": "distinct users with an event in the window"}}},
                "Similar": {"type": "object", "properties": {
                    "item_id": {"type": "string"}, "version": {"type": "string"},
                    "similar": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    "also_bought": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "title": {"type": "string"}, "score": {"type": "number"}}}}}},
                "Product": {"type": "object", "required": ["id", "title"], "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
                    "category": {"type": "string"}, "brand": {"type": "string"},
                    "price": {"type": ["number", "null"]}, "in_stock": {"type": ["boolean", "null"]},
                    "url": {"type": "string"}, "image_url": {"type": "string"},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "Event": {"type": "object", "required": ["event_id", "user_id", "type"], "properties": {
                    "event_id": {"type": "string", "maxLength": 128}, "user_id": {"type": "string", "maxLength": 128},
                    "type": {"type": "string", "enum": ["view", "click", "add_to_cart", "remove_from_cart",
                                                       "purchase", "search", "rating"]},
                    "item_id": {"type": "string"}, "value": {"type": "number"}, "query": {"type": "string"},
                    "timestamp": {"type": ["number", "string"], "description": "epoch seconds or ISO-8601"}}},
                "EventBatch": {"oneOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/Event"}},
                    {"type": "object", "properties": {"events": {"type": "array", "maxItems": 1000,
                                                                  "items": {"$ref": "#/components/schemas/Event"}}}}]},
                "IngestResult": {"type": "object", "properties": {
                    "accepted": {"type": "array", "items": {"type": "string"}},
                    "duplicates": {"type": "array", "items": {"type": "string"}},
                    "rejected": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
                "Recommendations": {"type": "object", "properties": {
                    "user_id": {"type": ["string", "null"]}, "version": {"type": "string"}, "k": {"type": "integer"},
                    "recommendations": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "title": {"type": "string"}, "score": {"type": "number"},
                        "reason": {"type": "string"},
                        "source": {"type": "string", "enum": ["content", "cooccurrence", "popular"]},
                        "because_item": {"type": ["string", "null"]},
                        "score_parts": {"type": "object"}}}}}},
                "Info": {"type": "object", "properties": {
                    "version": {"type": "string"}, "items": {"type": "integer"},
                    "versions": {"type": "array", "items": {"type": "string"}}, "manifest": {"type": "object"}}},
                "RebuildRequest": {"type": "object", "properties": {
                    "catalog": {"type": "string", "description": "catalog file path on the server; default: the current version's"},
                    "full": {"type": "boolean", "default": False}}},
                "Job": {"type": "object", "properties": {
                    "job": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
                    "stage": {"type": "string"}, "done": {"type": "integer"}, "total": {"type": "integer"},
                    "items_per_s": {"type": "number"}, "eta_s": {"type": "number"},
                    "version": {"type": "string"}, "error": {"type": "string"}}},
            },
        },
    }
