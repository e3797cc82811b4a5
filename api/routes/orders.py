"""Orders: create (idempotent), list (keyset), get, status transitions and driver assignment."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from flask import Blueprint, jsonify, request
from psycopg import sql

from api import idempotency
from api.cache import cache
from api.context import identity, request_id, require, services
from api.daterange import query_range
from api.pagination import keyset_query, page_args, page_body
from api.validation import Field, Validator, json_body, uuid_arg
from common import events
from common.auth import Identity
from common.errors import InvalidTransition, NotFound, ValidationFailed, VersionConflict
from common.orders import (
    ASSIGNABLE_STATUSES,
    ITEM_COLUMNS,
    ORDER_COLUMNS,
    STATUSES,
    can_see_order,
    check_transition,
    order_event_data,
    order_json,
)
from common.roles import ROLES_WITH_RESTAURANT, Role

bp = Blueprint("orders", __name__, url_prefix="/api/orders")

CACHE_NAMESPACE = "orders"
CACHE_TTL_S = 15 * 60

MAX_ITEMS = 100
_create_body = Validator({
    "items": Field("list", min=1, max=MAX_ITEMS),
    "notes": Field("string", required=False, nullable=True, max=2000),
    "customer_name": Field("string", required=False, nullable=True, max=200),
    "restaurant_id": Field("uuid", required=False),
})
_item = Validator({"product_id": Field("uuid"), "quantity": Field("integer", min=1, max=10000)})
_status_body = Validator({"status": Field("string", choices=STATUSES), "version": Field("integer", required=False,
                                                                                         min=1)})
_assign_body = Validator({"driver_id": Field("uuid")})


def _items(raw: list[Any]) -> list[dict[str, Any]]:
    items, errors = [], {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            errors[f"items[{index}]"] = "expected an object"
            continue
        try:
            items.append(_item(entry, prefix=f"items[{index}]."))
        except ValidationFailed as exc:
            errors.update(exc.details)
    if errors:
        raise ValidationFailed("the body has invalid fields", details=errors)
    return items


def load_order(conn: psycopg.Connection[Any], order_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    suffix = " FOR UPDATE" if lock else ""
    return conn.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %s{suffix}", (order_id,)).fetchone()


def load_items(conn: psycopg.Connection[Any], order_ids: list[Any]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {str(order_id): [] for order_id in order_ids}
    if order_ids:
        rows = conn.execute(
            f"SELECT {ITEM_COLUMNS} FROM order_items WHERE order_id = ANY(%s) ORDER BY order_id, line_no",
            (order_ids,),
        ).fetchall()
        for row in rows:
            grouped[str(row["order_id"])].append(row)
    return grouped


def _visible_order(conn: psycopg.Connection[Any], who: Identity, order_id: str, *, lock: bool) -> dict[str, Any]:
    order = load_order(conn, uuid_arg(order_id, what="order"), lock=lock)
    if order is None or not can_see_order(who, order):
        raise NotFound("no such order")
    return order


@bp.post("")
@require("admin", "restaurant", write=True)
def create_order() -> Any:
    who = identity()
    body = json_body()
    clean = _create_body(body)
    items = _items(clean["items"])
    if who.is_admin:
        if "restaurant_id" not in clean:
            raise ValidationFailed("admins name the restaurant", details={"restaurant_id": "required"})
        restaurant_id = clean["restaurant_id"]
    else:
        if "restaurant_id" in clean and clean["restaurant_id"] != who.restaurant_id:
            raise ValidationFailed("a restaurant orders for itself", details={"restaurant_id": "not yours"})
        restaurant_id = who.restaurant_id
    key = idempotency.idempotency_key()
    fingerprint = idempotency.request_fingerprint(body) if key is not None else ""
    product_ids = list({item["product_id"] for item in items})
    with services().pool.connection() as conn:
        # Round trip 1 (after the one that began the transaction with the caller's claims, so
        # row-level security applies: common/db.py Pool.connection): claim the key and read
        # everything the order needs.
        facts = conn.execute(_READ_WITH_CLAIM if key is not None else _READ, (
            *(idempotency.claim_params(user_id=who.user_id, key=key, fingerprint=fingerprint)
              if key is not None else ()), restaurant_id, product_ids)).fetchone()
        assert facts is not None
        if key is not None:
            replay = idempotency.finish_claim(conn, facts["claimed"], user_id=who.user_id, key=key,
                                              fingerprint=fingerprint)
            if replay is not None:
                return jsonify(replay.body), replay.status, {"Idempotent-Replayed": "true"}
        if not facts["known"]:
            raise ValidationFailed("no such restaurant", details={"restaurant_id": "unknown"})
        order, lines = _build_order(who, restaurant_id, clean, items, facts["products"], now=facts["now"])
        reply = order_json(order, lines)
        # Round trip 2: every write and the COMMIT in one message, so the transaction (and the
        # outbox row, drawn last) is held for one round trip. See _send_writes.
        _send_writes(conn, order, lines, event=order_event_data(order, request_id=request_id()),
                     idempotency_record=(who.user_id, key, reply) if key is not None else None)
    return jsonify(reply), 201, {"Location": f"/api/orders/{reply['id']}"}


# now() is the transaction's start, the value the orders columns' defaults would take. Prices
# travel as text so they stay exact decimals.
_FACTS = (
    " EXISTS (SELECT 1 FROM restaurants WHERE id = %s) AS known,"
    " (SELECT coalesce(json_agg(json_build_object('id', p.id, 'name', p.name, 'price', p.price::text)), '[]')"
    "  FROM products p WHERE p.id = ANY(%s::uuid[]) AND p.active) AS products"
)
_READ = "SELECT now() AS now," + _FACTS
_READ_WITH_CLAIM = (f"WITH claimed AS ({idempotency.CLAIM_SQL})"
                    " SELECT now() AS now, EXISTS (SELECT 1 FROM claimed) AS claimed," + _FACTS)


def _build_order(who: Identity, restaurant_id: str, clean: dict[str, Any], items: list[dict[str, Any]],
                 products_found: list[dict[str, Any]], *, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The order row and its lines as the database will hold them, priced from the catalogue.

    Built here, before anything is written, so the reply, the event and the idempotency record
    need no read-back: the id is ours, the timestamps are the transaction's `now()` (the columns'
    default), status and version are the columns' defaults.
    """
    products = {str(row["id"]): {**row, "price": Decimal(row["price"])} for row in products_found}
    missing = {f"items[{n}].product_id": "unknown or inactive product"
               for n, item in enumerate(items) if item["product_id"] not in products}
    if missing:
        raise ValidationFailed("some products are unknown or inactive", details=missing)
    order_id = str(uuid.uuid4())
    lines = []
    total = Decimal("0.00")
    for line_no, item in enumerate(items, start=1):
        product = products[item["product_id"]]
        line_total = product["price"] * item["quantity"]
        total += line_total
        lines.append({"order_id": order_id, "line_no": line_no, "product_id": item["product_id"],
                      "name": product["name"], "quantity": item["quantity"], "unit_price": product["price"],
                      "line_total": line_total})
    order = {"id": order_id, "restaurant_id": restaurant_id, "created_by": who.user_id, "driver_id": None,
             "status": "pending", "total_amount": total, "notes": clean.get("notes"),
             "customer_name": clean.get("customer_name"), "version": 1, "created_at": now, "updated_at": now}
    return order, lines


def _send_writes(conn: psycopg.Connection[Any], order: dict[str, Any], lines: list[dict[str, Any]], *,
                 event: dict[str, Any], idempotency_record: tuple[str, str, dict[str, Any]] | None) -> None:
    """The order, its items, the outbox row, the idempotency record and COMMIT as one message.

    Several statements in one message need client-side binding (the extended protocol takes one
    statement per message); psycopg quotes every value. They stay separate statements, not CTEs
    of one: the order_items policy must see the order row, which a sibling CTE could not. (psycopg's
    pipeline mode would also batch them, but under gevent it spins while waiting for the results.)
    """
    statements: list[sql.Composable] = [
        sql.SQL("INSERT INTO orders (id, restaurant_id, created_by, total_amount, notes, customer_name, created_at,"
                " updated_at) VALUES ({}, {}, {}, {}, {}, {}, {}, {})").format(*map(sql.Literal, (
                    order["id"], order["restaurant_id"], order["created_by"], order["total_amount"], order["notes"],
                    order["customer_name"], order["created_at"], order["updated_at"]))),
        sql.SQL("INSERT INTO order_items (order_id, line_no, product_id, name, quantity, unit_price, line_total)"
                " SELECT {}::uuid, * FROM unnest({}::smallint[], {}::uuid[], {}::text[], {}::integer[],"
                " {}::numeric[], {}::numeric[])").format(sql.Literal(order["id"]), *(
                    sql.Literal([line[column] for line in lines])
                    for column in ("line_no", "product_id", "name", "quantity", "unit_price", "line_total"))),
        sql.SQL("INSERT INTO events (channels, event, data) VALUES ({}::text[], {}, {}::jsonb)").format(
            sql.Literal(events.order_channels(order)), sql.Literal(events.ORDER_CREATED),
            sql.Literal(json.dumps(event, default=str))),
    ]
    if idempotency_record is not None:
        user_id, key, reply = idempotency_record
        statements.append(idempotency.record_statement(user_id=user_id, key=key, status=201, body=reply))
    statements.append(sql.SQL("COMMIT"))
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(sql.SQL("; ").join(statements))


@bp.get("")
@require()
def list_orders() -> Any:
    who = identity()
    page = page_args()
    where: list[str] = []
    params: list[Any] = []
    status = request.args.get("status")
    if status is not None:
        if status not in STATUSES:
            raise ValidationFailed("unknown status", details={"status": f"one of: {', '.join(STATUSES)}"})
        where.append("status = %s")
        params.append(status)
    for name in ("restaurant_id", "driver_id"):
        value = request.args.get(name)
        if value is not None:
            where.append(f"{name} = %s")
            params.append(_uuid_query(name, value))
    created = query_range("created_from", "created_to")
    if created.start is not None:
        where.append("created_at >= %s")
        params.append(created.start)
    if created.end is not None:
        where.append("created_at < %s")
        params.append(created.end)
    if who.role in ROLES_WITH_RESTAURANT:
        where.append("restaurant_id = %s")
        params.append(who.restaurant_id)
    elif who.role == Role.DRIVER:
        where.append("driver_id = %s")
        params.append(who.user_id)
    sql, params = keyset_query(f"SELECT {ORDER_COLUMNS} FROM orders", where, params, page)

    def run(conn: psycopg.Connection[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        rows = conn.execute(sql, params).fetchall()
        return rows, load_items(conn, [row["id"] for row in rows[: page.limit]])

    rows, items = services().read(run)
    return jsonify(page_body(rows, [order_json(row, items[str(row["id"])]) for row in rows[: page.limit]],
                             page.limit))


def _uuid_query(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be a UUID", details={name: "expected a UUID"}) from exc


@bp.get("/<order_id>")
@require()
def get_order(order_id: str) -> Any:
    """Served from Redis when cached; visibility is checked against the cached order the same way."""
    who = identity()
    order_id = uuid_arg(order_id, what="order")
    cached = cache().get(CACHE_NAMESPACE, order_id)
    if cached is not None:
        if not can_see_order(who, cached):
            raise NotFound("no such order")
        return jsonify(cached), 200, {"X-Cache": "HIT"}
    with services().pool.connection() as conn:
        order = _visible_order(conn, who, order_id, lock=False)
        items = load_items(conn, [order["id"]])[str(order["id"])]
    reply = order_json(order, items)
    _cache_order(reply)
    return jsonify(reply), 200, {"X-Cache": "MISS"}


def _cache_order(reply: dict[str, Any]) -> None:
    """Write-through after commit; the version guard keeps a slower, older write from winning."""
    cache().put_newer(CACHE_NAMESPACE, reply["id"], reply, version=reply["version"], ttl_s=CACHE_TTL_S)


@bp.post("/<order_id>/status")
@require(write=True)
def change_status(order_id: str) -> Any:
    who = identity()
    clean = _status_body(json_body())
    with services().pool.connection() as conn:
        order = _visible_order(conn, who, order_id, lock=True)
        if "version" in clean and clean["version"] != order["version"]:
            raise VersionConflict("the order changed since you read it",
                                  details={"version": order["version"], "status": order["status"]})
        check_transition(who, order, clean["status"])
        updated = conn.execute(
            f"UPDATE orders SET status = %s, version = version + 1, updated_at = now() WHERE id = %s"
            f" RETURNING {ORDER_COLUMNS}",
            (clean["status"], order["id"]),
        ).fetchone()
        assert updated is not None
        events.write_event(
            conn,
            event=events.ORDER_STATUS_CHANGED,
            channels=events.order_channels(updated),
            data=order_event_data(updated, request_id=request_id(), previous_status=order["status"]),
        )
        items = load_items(conn, [updated["id"]])[str(updated["id"])]
    reply = order_json(updated, items)
    _cache_order(reply)
    return jsonify(reply)


@bp.post("/<order_id>/assign")
@require("admin", write=True)
def assign_driver(order_id: str) -> Any:
    who = identity()
    clean = _assign_body(json_body())
    with services().pool.connection() as conn:
        order = _visible_order(conn, who, order_id, lock=True)
        if order["status"] not in ASSIGNABLE_STATUSES:
            raise InvalidTransition(f"an order that is {order['status']} cannot be assigned",
                                    details={"status": order["status"]})
        driver = conn.execute("SELECT id FROM drivers WHERE id = %s", (clean["driver_id"],)).fetchone()
        if driver is None:
            raise ValidationFailed("no such driver", details={"driver_id": "unknown"})
        updated = conn.execute(
            f"UPDATE orders SET driver_id = %s, version = version + 1, updated_at = now() WHERE id = %s"
            f" RETURNING {ORDER_COLUMNS}",
            (clean["driver_id"], order["id"]),
        ).fetchone()
        assert updated is not None
        events.write_event(
            conn,
            event=events.ORDER_ASSIGNED,
            channels=events.order_channels(updated),
            data=order_event_data(updated, request_id=request_id()),
        )
        items = load_items(conn, [updated["id"]])[str(updated["id"])]
    reply = order_json(updated, items)
    _cache_order(reply)
    return jsonify(reply)
