"""The OpenAPI 3.0 document of the REST API, served at `GET /api/openapi.json`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from common.roles import ROLES

bp = Blueprint("openapi", __name__)

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, *, extra: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = required
    return schema


def _page(item: str) -> Schema:
    return _obj({"items": {"type": "array", "items": _ref(item)},
                 "next_cursor": {"type": "string", "nullable": True}}, ["items", "next_cursor"])


STRING: Schema = {"type": "string"}
UUID: Schema = {"type": "string", "format": "uuid"}
TIME: Schema = {"type": "string", "format": "date-time"}
MONEY: Schema = {"type": "string", "pattern": r"^\d+\.\d{2}$", "example": "12.50"}
NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "enum": [
            "bad_request", "unauthorized", "forbidden", "not_found", "conflict", "invalid_transition",
            "version_conflict", "payload_too_large", "unsupported_media_type", "validation_error",
            "rate_limited", "unavailable", "method_not_allowed", "internal"]},
        "message": STRING,
        "details": {"nullable": True, "description": "for validation_error: field name -> problem"},
    }, ["code", "message", "details"])}, ["error"]),
    "Restaurant": _obj({"id": UUID, "name": STRING, "address": _nullable(STRING), "phone": _nullable(STRING),
                        "created_at": TIME}, ["id", "name", "address", "phone", "created_at"]),
    "RestaurantCreate": _obj({"name": {"type": "string", "minLength": 1, "maxLength": 200},
                              "address": _nullable({"type": "string", "maxLength": 500}),
                              "phone": _nullable({"type": "string", "maxLength": 40})}, ["name"]),
    "Profile": _obj({"id": UUID, "role": {"type": "string", "enum": list(ROLES)},
                     "display_name": STRING, "restaurant_id": _nullable(UUID), "created_at": TIME},
                    ["id", "role", "display_name", "restaurant_id", "created_at"]),
    "UserCreate": _obj({"id": UUID, "role": {"type": "string", "enum": list(ROLES)},
                        "display_name": {"type": "string", "maxLength": 200},
                        "restaurant_id": {**_nullable(UUID), "description": "required for restaurant and demo"}},
                       ["role", "display_name"]),
    "Product": _obj({"id": UUID, "name": STRING, "description": STRING, "category": STRING, "unit": STRING,
                     "price": MONEY, "active": {"type": "boolean"}, "created_at": TIME, "updated_at": TIME},
                    ["id", "name", "description", "category", "unit", "price", "active", "created_at",
                     "updated_at"]),
    "ProductCreate": _obj({"name": {"type": "string", "minLength": 1, "maxLength": 200},
                           "description": {"type": "string", "maxLength": 2000},
                           "category": {"type": "string", "minLength": 1, "maxLength": 100},
                           "unit": {"type": "string", "minLength": 1, "maxLength": 40, "default": "each"},
                           "price": MONEY, "active": {"type": "boolean", "default": True}},
                          ["name", "category", "price"]),
    "ProductPatch": {**_obj({"name": {"type": "string", "minLength": 1, "maxLength": 200},
                             "description": {"type": "string", "maxLength": 2000},
                             "category": {"type": "string", "minLength": 1, "maxLength": 100},
                             "unit": {"type": "string", "minLength": 1, "maxLength": 40},
                             "price": MONEY, "active": {"type": "boolean"}}), "minProperties": 1},
    "OrderItem": _obj({"product_id": UUID, "name": STRING, "quantity": {"type": "integer"},
                       "unit_price": MONEY, "line_total": MONEY},
                      ["product_id", "name", "quantity", "unit_price", "line_total"]),
    "Order": _obj({"id": UUID, "restaurant_id": UUID, "created_by": UUID, "driver_id": _nullable(UUID),
                   "status": {"type": "string", "enum": ["pending", "confirmed", "preparing", "ready", "delivering",
                                                         "delivered", "cancelled"]},
                   "items": {"type": "array", "items": _ref("OrderItem")}, "total_amount": MONEY,
                   "notes": _nullable(STRING), "customer_name": _nullable(STRING), "version": {"type": "integer"},
                   "created_at": TIME, "updated_at": TIME},
                  ["id", "restaurant_id", "created_by", "driver_id", "status", "items", "total_amount", "notes",
                   "customer_name", "version", "created_at", "updated_at"]),
    "OrderCreate": _obj({"items": {"type": "array", "minItems": 1, "maxItems": 100, "items": _obj(
                            {"product_id": UUID, "quantity": {"type": "integer", "minimum": 1, "maximum": 10000}},
                            ["product_id", "quantity"])},
                         "notes": _nullable({"type": "string", "maxLength": 2000}),
                         "customer_name": _nullable({"type": "string", "maxLength": 200}),
                         "restaurant_id": {**UUID, "description": "admins only, required for them"}}, ["items"]),
    "OrderStatusChange": _obj({"status": {"type": "string", "enum": [
        "pending", "confirmed", "preparing", "ready", "delivering", "delivered", "cancelled"]},
                               "version": {"type": "integer", "minimum": 1}}, ["status"]),
    "OrderAssign": _obj({"driver_id": UUID}, ["driver_id"]),
    "DriverStatusChange": _obj({"status": {"type": "string", "enum": ["online", "offline", "on_break"]}},
                               ["status"]),
    "DriverStatus": _obj({"id": UUID, "status": {"type": "string", "enum": ["online", "offline", "on_break"]},
                          "updated_at": TIME}, ["id", "status", "updated_at"]),
    "LocationPoint": _obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                           "lng": {"type": "number", "minimum": -180, "maximum": 180},
                           "heading": _nullable({"type": "number", "minimum": 0, "exclusiveMaximum": True,
                                                 "maximum": 360}),
                           "speed": _nullable({"type": "number", "minimum": 0}),
                           "accuracy": _nullable({"type": "number", "minimum": 0}),
                           "recorded_at": {**_nullable(TIME), "description":
                                           "with a zone; at most 5 min ahead, at most 1 day old; default now"}},
                          ["lat", "lng"]),
    "LocationBatch": _obj({"points": {"type": "array", "minItems": 1, "maxItems": 500,
                                      "items": _ref("LocationPoint")}}, ["points"]),
    "Accepted": _obj({"accepted": {"type": "integer"}}, ["accepted"]),
    "DriverLocation": _obj({"driver_id": UUID, "lat": NUMBER, "lng": NUMBER, "heading": _nullable(NUMBER),
                            "speed": _nullable(NUMBER), "accuracy": _nullable(NUMBER), "recorded_at": TIME},
                           ["driver_id", "lat", "lng", "heading", "speed", "accuracy", "recorded_at"]),
    "Driver": _obj({"id": UUID, "display_name": STRING,
                    "status": {"type": "string", "enum": ["online", "offline", "on_break"]},
                    "last_location": _nullable(_obj({
                        "lat": NUMBER, "lng": NUMBER, "recorded_at": TIME,
                        "age_s": {**NUMBER, "description": "seconds between recorded_at and the answer"}},
                        ["lat", "lng", "recorded_at", "age_s"])),
                    "active_order_ids": {"type": "array", "items": UUID}},
                   ["id", "display_name", "status", "last_location", "active_order_ids"]),
    "OrderAnalytics": _obj({"from": TIME, "to": TIME,
                            "group_by": {"type": "string", "enum": ["day", "restaurant", "status"]},
                            "rows": {"type": "array", "items": _obj({
                                "key": {**STRING, "description": "YYYY-MM-DD (UTC), a restaurant id or a status"},
                                "orders": INTEGER,
                                "revenue": {**MONEY, "description": "total of the orders that were not cancelled"},
                                "delivered": INTEGER,
                                "avg_delivery_minutes": {**_nullable(NUMBER),
                                                         "description": "confirmed to delivered; null when none"}},
                                ["key", "orders", "revenue", "delivered", "avg_delivery_minutes"])}},
                           ["from", "to", "group_by", "rows"]),
    "Status": _obj({"status": STRING}, ["status"], extra=True),
    "Connections": _obj({"total": {"type": "integer"}, "by_role": _obj({
        role: {"type": "integer"} for role in ROLES}),
        "subscriptions": {"type": "integer"}, "instances": {"type": "array", "items": _obj({
            "id": STRING, "connections": {"type": "integer"}, "subscriptions": {"type": "integer"},
            "messages_out_per_s": NUMBER, "slow_consumer_disconnects": {"type": "integer"},
            "started_at": TIME, "last_seen": TIME}, extra=True)}}, ["total", "by_role", "subscriptions", "instances"],
        extra=True),
    "DatabasePerformance": _obj({
        "connection_pool": _obj({"size": INTEGER, "in_use": INTEGER, "idle": INTEGER, "waiting": INTEGER,
                                 "max_size": INTEGER, "utilisation": {**NUMBER, "description": "in_use / max_size"}},
                                ["size", "in_use", "idle", "waiting", "max_size", "utilisation"]),
        "query_performance": _obj({"p50_ms": _nullable(NUMBER), "p95_ms": _nullable(NUMBER),
                                   "p99_ms": _nullable(NUMBER), "samples": INTEGER, "window_s": INTEGER},
                                  ["p50_ms", "p95_ms", "p99_ms", "samples", "window_s"]),
        "slow_queries": {"type": "array", "items": _ref("SlowQuery"),
                         "description": "up to 5 statements with a mean of 100 ms or more; empty without "
                                        "pg_stat_statements"},
        "alerts": {"type": "array", "items": _ref("Alert"), "description": "alerts firing now"},
        "time_range": {"type": "string", "enum": ["1h", "24h", "7d"]},
        "history": {"type": "array", "items": _ref("PerformancePoint"), "description": "with timeRange only"}},
        ["connection_pool", "query_performance", "slow_queries", "alerts"]),
    "SlowQuery": _obj({"query": {**_nullable(STRING), "description": "normalised: constants are $1, $2, ...; "
                                                                    "null when PostgreSQL lost the text"},
                       "calls": INTEGER, "mean_ms": NUMBER, "max_ms": NUMBER, "total_ms": NUMBER},
                      ["query", "calls", "mean_ms", "max_ms", "total_ms"]),
    "SlowQueries": _obj({"min_ms": NUMBER, "limit": INTEGER, "items": {"type": "array", "items": _ref("SlowQuery")}},
                        ["min_ms", "limit", "items"]),
    "Alert": _obj({"name": {"type": "string", "enum": ["query_latency_p95", "pool_utilisation", "cache_hit_ratio",
                                                       "relay_lag", "slow_consumer_storm"]},
                   "message": STRING, "value": NUMBER, "threshold": NUMBER,
                   "severity": {"type": "string", "enum": ["warning", "critical"]}},
                  ["name", "message", "value", "threshold", "severity"]),
    "PerformancePoint": _obj({"at": TIME, "samples": INTEGER, "p50_ms": _nullable(NUMBER),
                              "p95_ms": _nullable(NUMBER), "p99_ms": _nullable(NUMBER),
                              "pool_utilisation": _nullable(NUMBER), "pool_waiting": _nullable(INTEGER),
                              "relay_lag_s": _nullable(NUMBER), "cache_hit_ratio": _nullable(NUMBER)},
                             ["at", "samples", "p50_ms", "p95_ms", "p99_ms", "pool_utilisation", "pool_waiting",
                              "relay_lag_s", "cache_hit_ratio"]),
    "CacheStats": _obj({"hits": INTEGER, "misses": INTEGER,
                        "hit_ratio": {**_nullable(NUMBER), "description": "null before the first lookup"},
                        "keys": INTEGER, "keys_by_namespace": {"type": "object",
                                                               "additionalProperties": INTEGER}},
                       ["hits", "misses", "hit_ratio", "keys", "keys_by_namespace"]),
    "CacheEntry": _obj({"key": {**STRING, "description": "the full Redis key"}, "hit": {"type": "boolean"},
                        "value": {"nullable": True, "description": "the cached JSON with customer_name, notes, "
                                                                   "display_name, phone and address redacted"},
                        "ttl": {"type": "integer", "nullable": True, "description": "seconds left"}},
                       ["key", "hit", "value", "ttl"]),
}

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
                   "content": {"application/json": {"schema": _ref("Error")}}} for code in codes}


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
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
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
        "/health": {"get": _op("liveness", ("200", ok("the process lives", _ref("Status"))), auth=False,
                               limited=False)},
        "/ready": {"get": _op("readiness of PostgreSQL and Redis", ("200", ok("both answer", _ref("Status"))),
                              errors=("503",), auth=False, limited=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics of this process (not rate limited)", "security": [],
                             "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                                   "content": {"text/plain": {"schema": STRING}}}}}},
        "/api/openapi.json": {"get": _op("this document", ("200", ok("OpenAPI 3.0", {"type": "object"})),
                                         auth=False)},
        "/api/asyncapi.json": {"get": _op("the WebSocket protocol", ("200", ok("AsyncAPI 3.0", {"type": "object"})),
                                          auth=False)},
        "/api/restaurants": {
            "post": _op("create a restaurant (admin)", ("201", ok("created", _ref("Restaurant"))),
                        body="RestaurantCreate", errors=WRITE_ERRORS),
            "get": _op("restaurants, newest first (admin: all; restaurant and demo: their own)",
                       ("200", ok("a page", _page("Restaurant"))), errors=("403", "422"), params=PAGE_PARAMS),
        },
        "/api/restaurants/{restaurant_id}": {
            "get": _op("one restaurant (admin, or its members)", ("200", ok("found", _ref("Restaurant"))),
                       errors=("404",), params=[_path_id("restaurant_id")]),
        },
        "/api/users": {
            "post": _op("create a profile (admin); a driver also gets a driver record",
                        ("201", ok("created", _ref("Profile"))), body="UserCreate", errors=("403", "409")),
        },
        "/api/products": {
            "post": _op("create a product (admin)", ("201", ok("created", _ref("Product"))), body="ProductCreate",
                        errors=WRITE_ERRORS),
            "get": _op("products, newest first, cached in Redis", ("200", ok("a page", _page("Product"))),
                       errors=("422",), headers=X_CACHE, params=[
                           _query("category", STRING), _query("active", {"type": "boolean"}),
                           _query("q", STRING, "full-text search over name and description"), *PAGE_PARAMS]),
        },
        "/api/products/{product_id}": {
            "get": _op("one product, cached in Redis", ("200", ok("found", _ref("Product"))), errors=("404",),
                       headers=X_CACHE, params=[_path_id("product_id")]),
            "patch": _op("change a product (admin); invalidates the product cache",
                         ("200", ok("changed", _ref("Product"))), body="ProductPatch", errors=("403", "404"),
                         params=[_path_id("product_id")]),
        },
        "/api/orders": {
            "post": _op("create an order (restaurant for itself, admin with restaurant_id)",
                        ("201", ok("created, or the first response again for a reused Idempotency-Key",
                                   _ref("Order"))),
                        body="OrderCreate", errors=("403", "409"), params=[
                            {"name": "Idempotency-Key", "in": "header", "required": False,
                             "schema": {"type": "string", "minLength": 1, "maxLength": 255}}]),
            "get": _op("orders the caller may see, newest first", ("200", ok("a page", _page("Order"))),
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
                       ("200", ok("one row per group that has orders", _ref("OrderAnalytics"))),
                       errors=("403", "422"), params=[
                           _query("from", DATE_PARAM, "inclusive"), _query("to", DATE_PARAM, "exclusive"),
                           _query("group_by", {"type": "string", "enum": ["day", "restaurant", "status"],
                                               "default": "day"})]),
        },
        "/api/orders/{order_id}": {
            "get": _op("one order", ("200", ok("found", _ref("Order"))), errors=("404",),
                       params=[_path_id("order_id")]),
        },
        "/api/orders/{order_id}/status": {
            "post": _op("move an order along its status machine", ("200", ok("moved", _ref("Order"))),
                        body="OrderStatusChange", errors=("403", "404", "409"), params=[_path_id("order_id")]),
        },
        "/api/orders/{order_id}/assign": {
            "post": _op("assign a driver (admin) while confirmed, preparing or ready",
                        ("200", ok("assigned", _ref("Order"))), body="OrderAssign", errors=("403", "404", "409"),
                        params=[_path_id("order_id")]),
        },
        "/api/drivers/me/status": {
            "post": _op("set the calling driver's status", ("200", ok("set", _ref("DriverStatus"))),
                        body="DriverStatusChange", errors=WRITE_ERRORS),
        },
        "/api/drivers/me/locations": {
            "post": _op("store up to 500 GPS points of the calling driver and publish them live",
                        ("202", ok("stored", _ref("Accepted"))), body="LocationBatch", errors=WRITE_ERRORS),
        },
        "/api/drivers": {
            "get": _op("every driver with status, last position and active orders (admin)",
                       ("200", ok("a page", _page("Driver"))), errors=("403", "422"), params=[
                           _query("status", {"type": "string", "enum": ["online", "offline", "on_break"]}),
                           *PAGE_PARAMS]),
        },
        "/api/drivers/{driver_id}/location": {
            "get": _op("latest position (admin, the driver, a restaurant with an active order assigned to it)",
                       ("200", ok("found", _ref("DriverLocation"))), errors=("404",),
                       params=[_path_id("driver_id")]),
        },
        "/api/realtime/connections": {
            "get": _op("WebSocket connections across all gateways (admin)",
                       ("200", ok("counts", _ref("Connections"))), errors=("403",)),
        },
        "/api/performance/database": {
            "get": _op("database pool, query latency of the last 5 minutes (measured in this API process), "
                       "slowest statements and firing alerts (admin)",
                       ("200", ok("figures", _ref("DatabasePerformance"))), errors=("403", "422", "503"),
                       params=[_query("timeRange", {"type": "string", "enum": ["1h", "24h", "7d"]},
                                      "also return the sampled history of this range")]),
        },
        "/api/performance/slow-queries": {
            "get": _op("statements from pg_stat_statements with a mean time of at least min_ms, slowest first "
                       "(admin); 503 unavailable when the extension is not loaded",
                       ("200", ok("statements", _ref("SlowQueries"))), errors=("403", "422", "503"),
                       params=[_query("min_ms", {"type": "number", "minimum": 0, "default": 100}),
                               _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 20})]),
        },
        "/api/performance/cache": {
            "get": _op("cache hits, misses (shared counters in Redis) and stored entries (admin)",
                       ("200", ok("figures", _ref("CacheStats"))), errors=("403", "503")),
        },
        "/api/cache/{key}": {
            "get": _op("one entry of the products or orders cache, personal fields redacted (admin); the key is "
                       "the full Redis key or <namespace>:<key> in the current generation; other keys are 404",
                       ("200", ok("entry (hit false when absent)", _ref("CacheEntry"))),
                       errors=("403", "404", "503"),
                       params=[{"name": "key", "in": "path", "required": True, "schema": STRING}]),
        },
    }


# The validator refuses NUL characters in text (PostgreSQL cannot store them); say so in the schema.
NO_NUL = "^[^\\u0000]*$"
REQUEST_BODIES = ("RestaurantCreate", "UserCreate", "ProductCreate", "ProductPatch", "OrderCreate")


def _refuse_nul(schema: Schema) -> Schema:
    """Copy of a request schema whose free-text strings carry the no-NUL pattern."""
    if schema.get("type") == "string" and not ({"enum", "format", "pattern"} & set(schema)):
        return {**schema, "pattern": NO_NUL}
    copy = dict(schema)
    if "properties" in copy:
        copy["properties"] = {name: _refuse_nul(item) for name, item in copy["properties"].items()}
    for key in ("items", "allOf"):
        if isinstance(copy.get(key), dict):
            copy[key] = _refuse_nul(copy[key])
    return copy


def document() -> dict[str, Any]:
    schemas = {name: _refuse_nul(item) if name in REQUEST_BODIES else item for name, item in SCHEMAS.items()}
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
            "schemas": schemas,
        },
    }


@bp.get("/api/openapi.json")
def openapi_json() -> Any:
    return jsonify(document())
