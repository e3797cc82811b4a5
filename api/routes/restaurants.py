"""Restaurants: admins create and list them; members read their own."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.context import identity, require, services
from api.pagination import keyset_query, page_args, page_body
from api.validation import Field, Validator, json_body, uuid_arg
from common.errors import NotFound
from common.events import iso

bp = Blueprint("restaurants", __name__, url_prefix="/api/restaurants")

RESTAURANT_COLUMNS = "id, name, address, phone, created_at"
_create_body = Validator({
    "name": Field("string", min=1, max=200),
    "address": Field("string", required=False, nullable=True, max=500),
    "phone": Field("string", required=False, nullable=True, max=40),
})


def restaurant_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "address": row["address"],
        "phone": row["phone"],
        "created_at": iso(row["created_at"]),
    }


@bp.post("")
@require("admin", write=True)
def create_restaurant() -> Any:
    clean = _create_body(json_body())
    with services().pool.connection() as conn:
        row = conn.execute(
            f"INSERT INTO restaurants (name, address, phone) VALUES (%s, %s, %s) RETURNING {RESTAURANT_COLUMNS}",
            (clean["name"], clean.get("address"), clean.get("phone")),
        ).fetchone()
    assert row is not None
    return jsonify(restaurant_json(row)), 201, {"Location": f"/api/restaurants/{row['id']}"}


@bp.get("")
@require("admin", "restaurant", "demo")
def list_restaurants() -> Any:
    who = identity()
    page = page_args()
    where: list[str] = []
    params: list[Any] = []
    if not who.is_admin:
        where.append("id = %s")
        params.append(who.restaurant_id)
    sql, params = keyset_query(f"SELECT {RESTAURANT_COLUMNS} FROM restaurants", where, params, page)
    rows = services().read(lambda conn: conn.execute(sql, params).fetchall())
    return jsonify(page_body(rows, [restaurant_json(row) for row in rows[: page.limit]], page.limit))


@bp.get("/<restaurant_id>")
@require()
def get_restaurant(restaurant_id: str) -> Any:
    who = identity()
    restaurant_id = uuid_arg(restaurant_id, what="restaurant")
    if not who.is_admin and who.restaurant_id != restaurant_id:
        raise NotFound("no such restaurant")
    row = services().read(lambda conn: conn.execute(f"SELECT {RESTAURANT_COLUMNS} FROM restaurants WHERE id = %s",
                                                    (restaurant_id,)).fetchone())
    if row is None:
        raise NotFound("no such restaurant")
    return jsonify(restaurant_json(row))
