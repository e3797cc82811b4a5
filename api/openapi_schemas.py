"""The OpenAPI document's component schemas: the shapes of every request and response body."""

from __future__ import annotations

from typing import Any

from common import gps
from common.roles import ROLES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, *, extra: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = required
    return schema


def page(item: str) -> Schema:
    return _obj({"items": {"type": "array", "items": ref(item)},
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
                   "items": {"type": "array", "items": ref("OrderItem")}, "total_amount": MONEY,
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
    "LocationPoint": _obj({"lat": {"type": "number", "minimum": gps.LAT_MIN, "maximum": gps.LAT_MAX},
                           "lng": {"type": "number", "minimum": gps.LNG_MIN, "maximum": gps.LNG_MAX},
                           "heading": _nullable({"type": "number", "minimum": gps.HEADING_MIN,
                                                 "exclusiveMaximum": True, "maximum": gps.HEADING_BELOW}),
                           "speed": _nullable({"type": "number", "minimum": 0, "maximum": gps.SPEED_MAX}),
                           "accuracy": _nullable({"type": "number", "minimum": 0, "maximum": gps.ACCURACY_MAX}),
                           "recorded_at": {**_nullable(TIME), "description":
                                           "with a zone; at most 5 min ahead, at most 1 day old; default now"}},
                          list(gps.REQUIRED)),
    "LocationBatch": _obj({"points": {"type": "array", "minItems": 1, "maxItems": 500,
                                      "items": ref("LocationPoint")}}, ["points"]),
    "Accepted": _obj({"accepted": {"type": "integer"}}, ["accepted"]),
    "DriverLocation": _obj({"driver_id": UUID, "lat": NUMBER, "lng": NUMBER, "heading": _nullable(NUMBER),
                            "speed": _nullable(NUMBER), "accuracy": _nullable(NUMBER), "recorded_at": TIME},
                           ["driver_id", "lat", "lng", "heading", "speed", "accuracy", "recorded_at"]),
    "Driver": _obj({"id": UUID, "display_name": STRING,
                    "status": {"type": "string", "enum": ["online", "stale", "offline", "on_break"],
                               "description": "online only while connected or seen within DRIVER_STALE_SECONDS"},
                    "reported_status": {"type": "string", "enum": ["online", "offline", "on_break"],
                                        "description": "what the driver last said"},
                    "last_seen_at": {**_nullable(TIME), "description": "the driver's app last connected or reported"},
                    "last_location": _nullable(_obj({
                        "lat": NUMBER, "lng": NUMBER, "recorded_at": TIME,
                        "age_s": {**NUMBER, "description": "seconds between recorded_at and the answer"}},
                        ["lat", "lng", "recorded_at", "age_s"])),
                    "active_order_ids": {"type": "array", "items": UUID}},
                   ["id", "display_name", "status", "reported_status", "last_seen_at", "last_location",
                    "active_order_ids"]),
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
    "ConnectTicket": _obj({"ticket": {"type": "string"}, "expires_in": {"type": "number"}}, ["ticket", "expires_in"]),
    "Connections": _obj({"total": {"type": "integer"}, "by_role": _obj({
        role: {"type": "integer"} for role in ROLES}),
        "subscriptions": {"type": "integer"}, "instances": {"type": "array", "items": _obj({
            "id": STRING, "connections": {"type": "integer"}, "subscriptions": {"type": "integer"},
            "messages_out_per_s": NUMBER, "slow_consumer_disconnects": {"type": "integer"},
            "delivery_p95_ms": _nullable(NUMBER),
            "started_at": TIME, "last_seen": TIME}, extra=True)}}, ["total", "by_role", "subscriptions", "instances"],
        extra=True),
    "DatabasePerformance": _obj({
        "connection_pool": _obj({"size": INTEGER, "in_use": INTEGER, "idle": INTEGER, "waiting": INTEGER,
                                 "max_size": INTEGER, "utilisation": {**NUMBER, "description": "in_use / max_size"}},
                                ["size", "in_use", "idle", "waiting", "max_size", "utilisation"]),
        "query_performance": _obj({"p50_ms": _nullable(NUMBER), "p95_ms": _nullable(NUMBER),
                                   "p99_ms": _nullable(NUMBER), "samples": INTEGER, "window_s": INTEGER},
                                  ["p50_ms", "p95_ms", "p99_ms", "samples", "window_s"]),
        "slow_queries": {"type": "array", "items": ref("SlowQuery"),
                         "description": "up to 5 statements with a mean of 100 ms or more; empty without "
                                        "pg_stat_statements"},
        "alerts": {"type": "array", "items": ref("Alert"), "description": "alerts firing now"},
        "time_range": {"type": "string", "enum": ["1h", "24h", "7d"]},
        "history": {"type": "array", "items": ref("PerformancePoint"), "description": "with timeRange only"}},
        ["connection_pool", "query_performance", "slow_queries", "alerts"]),
    "SlowQuery": _obj({"query": {**_nullable(STRING), "description": "normalised: constants are $1, $2, ...; "
                                                                    "null when PostgreSQL lost the text"},
                       "calls": INTEGER, "mean_ms": NUMBER, "max_ms": NUMBER, "total_ms": NUMBER},
                      ["query", "calls", "mean_ms", "max_ms", "total_ms"]),
    "SlowQueries": _obj({"min_ms": NUMBER, "limit": INTEGER, "items": {"type": "array", "items": ref("SlowQuery")}},
                        ["min_ms", "limit", "items"]),
    "Alert": _obj({"name": {"type": "string", "enum": ["query_latency_p95", "pool_utilisation", "cache_hit_ratio",
                                                       "relay_lag", "slow_consumer_storm"]},
                   "message": STRING, "value": NUMBER, "threshold": NUMBER,
                   "severity": {"type": "string", "enum": ["warning", "critical"]}},
                  ["name", "message", "value", "threshold", "severity"]),
    "PerformancePoint": _obj({"at": TIME, "samples": INTEGER, "p50_ms": _nullable(NUMBER),
                              "p95_ms": _nullable(NUMBER), "p99_ms": _nullable(NUMBER),
                              "pool_utilisation": _nullable(NUMBER), "pool_waiting": _nullable(INTEGER),
                              "relay_lag_s": _nullable(NUMBER), "cache_hit_ratio": _nullable(NUMBER),
                              "connections": _nullable(INTEGER),
                              "gateways": {**_nullable({"type": "object", "additionalProperties": INTEGER}),
                                           "description": "connections per gateway id"},
                              "deliveries_per_s": _nullable(NUMBER), "delivery_p95_ms": _nullable(NUMBER),
                              "orders_per_min": _nullable(NUMBER), "api_p95_ms": _nullable(NUMBER),
                              "api_error_rate": {**_nullable(NUMBER), "description": "share of requests answered 5xx"}},
                             ["at", "samples", "p50_ms", "p95_ms", "p99_ms", "pool_utilisation", "pool_waiting",
                              "relay_lag_s", "cache_hit_ratio", "connections", "gateways", "deliveries_per_s",
                              "delivery_p95_ms", "orders_per_min", "api_p95_ms", "api_error_rate"]),
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


def component_schemas() -> dict[str, Schema]:
    """SCHEMAS as the document publishes them: request bodies refuse NUL in free text."""
    return {name: _refuse_nul(item) if name in REQUEST_BODIES else item for name, item in SCHEMAS.items()}
