"""The OpenAPI 3.0 document of the REST API, served at `GET /api/openapi.json`: paths and operations
here, the body schemas in api/openapi_schemas.py."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.openapi_schemas import STRING, UUID, Schema, component_schemas, page, ref

bp = Blueprint("openapi", __name__)

_ERROR_STATUSES = {
    "400": "bad_request: malformed JSON or cursor", "401": "unauthorized: missing, bad or expired token",
    "403": "forbidden: the role may not do this (demo never writes)",
    "404": "not_found: no such row, or one the caller may not see",
    "409": "conflict, invalid_transition or version_conflict", "413": "payload_too_large: body over 1 MiB",
    "415": "unsupported_media_type: body is not application/json",
    "422": "validation_error: details name each bad field", "429": "rate_limited: see Retry-After",
    "503": "unavailable: PostgreSQL or Redis does not answer",
}
_RATE_HEADERS = {name: {"schema": {"type": "integer"}, "description": text} for name, text in (
    ("X-RateLimit-Limit", "requests allowed in the tightest window"),
    ("X-RateLimit-Remaining", "requests left in that window"),
    ("X-RateLimit-Reset", "seconds until that window resets"),
)}


def _errors(*codes: str) -> dict[str, Schema]:
    return {code: {"description": _ERROR_STATUSES[code],
                   "content": {"application/json": {"schema": ref("Error")}}} for code in codes}


def _json(description: str, schema: Schema, *, headers: dict[str, Schema] | None = None) -> Schema:
    reply: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        reply["headers"] = headers
    return reply


def _op(summary: str, ok: tuple[str, Schema], *, body: str | None = None, errors: tuple[str, ...] = (),
        params: list[Schema] | None = None, auth: bool = True, limited: bool = True,
        headers: dict[str, Schema] | None = None) -> Schema:
    status, reply = ok
    all_errors = ("401", *errors) if auth else errors
    if any(param.get("name") == "cursor" for param in params or []):
        all_errors = (*all_errors, "400")  # a cursor this API did not issue
    if limited:
        all_errors = (*all_errors, "429")
        headers = {**_RATE_HEADERS, **(headers or {})}
    operation: Schema = {
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/RequestId"}, *(params or [])],
        "responses": {status: {**reply, **({"headers": headers} if headers else {})}, **_errors(*all_errors)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
        operation["responses"].update(_errors("400", "413", "415", "422"))
    if not auth:
        operation["security"] = []
    return operation


def _path_id(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": UUID}


def _query(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


PAGE_PARAMS = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
               _query("cursor", STRING, "next_cursor of the previous page")]
DATE_PARAM: Schema = {"type": "string", "description": "ISO-8601 date (midnight UTC) or date-time (UTC "
                                                   "when it has no zone)", "example": "2026-03-01"}
CREATED_PARAMS = [_query("created_from", DATE_PARAM, "created at or after"),
                  _query("created_to", DATE_PARAM, "created before")]
X_CACHE = {"X-Cache": {"schema": {"type": "string", "enum": ["HIT", "MISS"]}}}
WRITE_ERRORS = ("403",)


def _paths() -> dict[str, Schema]:
    ok = _json
    return {
        "/health": {"get": _op("liveness", ("200", ok("the process lives", ref("Status"))), auth=False,
                               limited=False)},
        "/ready": {"get": _op("readiness of PostgreSQL and Redis", ("200", ok("both answer", ref("Status"))),
                              errors=("503",), auth=False, limited=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics of this process (not rate limited)", "security": [],
                             "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                                   "content": {"text/plain": {"schema": STRING}}}}}},
        "/api/openapi.json": {"get": _op("this document", ("200", ok("OpenAPI 3.0", {"type": "object"})),
                                         auth=False)},
        "/api/asyncapi.json": {"get": _op("the WebSocket protocol", ("200", ok("AsyncAPI 3.0", {"type": "object"})),
                                          auth=False)},
        "/api/restaurants": {
            "post": _op("create a restaurant (admin)", ("201", ok("created", ref("Restaurant"))),
                        body="RestaurantCreate", errors=WRITE_ERRORS),
            "get": _op("restaurants, newest first (admin: all; restaurant and demo: their own)",
                       ("200", ok("a page", page("Restaurant"))), errors=("403", "422"), params=PAGE_PARAMS),
        },
        "/api/restaurants/{restaurant_id}": {
            "get": _op("one restaurant (admin, or its members)", ("200", ok("found", ref("Restaurant"))),
                       errors=("404",), params=[_path_id("restaurant_id")]),
        },
        "/api/users": {
            "post": _op("create a profile (admin); a driver also gets a driver record",
                        ("201", ok("created", ref("Profile"))), body="UserCreate", errors=("403", "409")),
        },
        "/api/products": {
            "post": _op("create a product (admin)", ("201", ok("created", ref("Product"))), body="ProductCreate",
                        errors=WRITE_ERRORS),
            "get": _op("products, newest first, cached in Redis", ("200", ok("a page", page("Product"))),
                       errors=("422",), headers=X_CACHE, params=[
                           _query("category", STRING), _query("active", {"type": "boolean"}),
                           _query("q", STRING, "full-text search over name and description"), *PAGE_PARAMS]),
        },
        "/api/products/{product_id}": {
            "get": _op("one product, cached in Redis", ("200", ok("found", ref("Product"))), errors=("404",),
                       headers=X_CACHE, params=[_path_id("product_id")]),
            "patch": _op("change a product (admin); invalidates the product cache",
                         ("200", ok("changed", ref("Product"))), body="ProductPatch", errors=("403", "404"),
                         params=[_path_id("product_id")]),
        },
        "/api/orders": {
            "post": _op("create an order (restaurant for itself, admin with restaurant_id)",
                        ("201", ok("created, or the first response again for a reused Idempotency-Key",
                                   ref("Order"))),
                        body="OrderCreate", errors=("403", "409"), params=[
                            {"name": "Idempotency-Key", "in": "header", "required": False,
                             "schema": {"type": "string", "minLength": 1, "maxLength": 255}}]),
            "get": _op("orders the caller may see, newest first", ("200", ok("a page", page("Order"))),
                       errors=("422",), params=[_query("status", STRING), _query("restaurant_id", UUID),
                                                _query("driver_id", UUID), *CREATED_PARAMS, *PAGE_PARAMS]),
        },
        "/api/orders/export.csv": {
            "get": _op("the orders the caller may see, oldest first, as CSV streamed page by page (admin; "
                       "restaurant and demo: their own); a leading = + - @ tab or CR in customer_name gets a ' "
                       "before it so spreadsheets do not run it",
                       ("200", {"description": "a header row, then one row per order",
                                "content": {"text/csv": {"schema": STRING}}}),
                       errors=("403", "422"), params=CREATED_PARAMS),
        },
        "/api/analytics/orders": {
            "get": _op("orders, revenue and delivery time over [from, to) grouped by UTC day, restaurant or "
                       "status (admin; restaurant and demo: their own); at most 366 days, default the last 7",
                       ("200", ok("one row per group that has orders", ref("OrderAnalytics"))),
                       errors=("403", "422"), params=[
                           _query("from", DATE_PARAM, "inclusive"), _query("to", DATE_PARAM, "exclusive"),
                           _query("group_by", {"type": "string", "enum": ["day", "restaurant", "status"],
                                               "default": "day"})]),
        },
        "/api/orders/{order_id}": {
            "get": _op("one order", ("200", ok("found", ref("Order"))), errors=("404",),
                       params=[_path_id("order_id")]),
        },
        "/api/orders/{order_id}/status": {
            "post": _op("move an order along its status machine", ("200", ok("moved", ref("Order"))),
                        body="OrderStatusChange", errors=("403", "404", "409"), params=[_path_id("order_id")]),
        },
        "/api/orders/{order_id}/assign": {
            "post": _op("assign a driver (admin) while confirmed, preparing or ready",
                        ("200", ok("assigned", ref("Order"))), body="OrderAssign", errors=("403", "404", "409"),
                        params=[_path_id("order_id")]),
        },
        "/api/drivers/me/status": {
            "post": _op("set the calling driver's status", ("200", ok("set", ref("DriverStatus"))),
                        body="DriverStatusChange", errors=WRITE_ERRORS),
        },
        "/api/drivers/me/locations": {
            "post": _op("store up to 500 GPS points of the calling driver and publish them live",
                        ("202", ok("stored", ref("Accepted"))), body="LocationBatch", errors=WRITE_ERRORS),
        },
        "/api/drivers": {
            "get": _op("every driver with status, last position and active orders (admin)",
                       ("200", ok("a page", page("Driver"))), errors=("403", "422"), params=[
                           _query("status", {"type": "string", "enum": ["online", "offline", "on_break"]}),
                           *PAGE_PARAMS]),
        },
        "/api/drivers/{driver_id}/location": {
            "get": _op("latest position (admin, the driver, a restaurant with an active order assigned to it)",
                       ("200", ok("found", ref("DriverLocation"))), errors=("404",),
                       params=[_path_id("driver_id")]),
        },
        "/api/realtime/ticket": {
            "post": _op("a connect ticket for /ws?ticket=T: single use, good for 30 s and never past the token's "
                        "expiry (any authenticated user)", ("200", ok("issued", ref("ConnectTicket"))),
                        errors=("503",)),
        },
        "/api/realtime/connections": {
            "get": _op("WebSocket connections across all gateways (admin)",
                       ("200", ok("counts", ref("Connections"))), errors=("403",)),
        },
        "/api/performance/database": {
            "get": _op("database pool, query latency of the last 5 minutes (measured in this API process), "
                       "slowest statements and firing alerts (admin)",
                       ("200", ok("figures", ref("DatabasePerformance"))), errors=("403", "422", "503"),
                       params=[_query("timeRange", {"type": "string", "enum": ["1h", "24h", "7d"]},
                                      "also return the sampled history of this range")]),
        },
        "/api/performance/slow-queries": {
            "get": _op("statements from pg_stat_statements with a mean time of at least min_ms, slowest first "
                       "(admin); 503 unavailable when the extension is not loaded",
                       ("200", ok("statements", ref("SlowQueries"))), errors=("403", "422", "503"),
                       params=[_query("min_ms", {"type": "number", "minimum": 0, "default": 100}),
                               _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 20})]),
        },
        "/api/performance/cache": {
            "get": _op("cache hits, misses (shared counters in Redis) and stored entries (admin)",
                       ("200", ok("figures", ref("CacheStats"))), errors=("403", "503")),
        },
        "/api/cache/{key}": {
            "get": _op("one entry of the products or orders cache, personal fields redacted (admin); the key is "
                       "the full Redis key or <namespace>:<key> in the current generation; other keys are 404",
                       ("200", ok("entry (hit false when absent)", ref("CacheEntry"))),
                       errors=("403", "404", "503"),
                       params=[{"name": "key", "in": "path", "required": True, "schema": STRING}]),
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "dms REST API", "version": "1.0.0",
                 "description": "Every response carries X-Request-ID. Lists are keyset-paginated. "
                                "Money is a decimal string such as \"12.50\"."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "parameters": {"RequestId": {"name": "X-Request-ID", "in": "header", "required": False,
                                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,128}$"},
                                         "description": "echoed when valid, else generated"}},
            "schemas": component_schemas(),
        },
    }


@bp.get("/api/openapi.json")
def openapi_json() -> Any:
    return jsonify(document())
