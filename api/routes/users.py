"""Users: admins create profiles ahead of a user's first request (drivers get a drivers row too)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from flask import Blueprint, jsonify

from api.context import require, services
from api.validation import Field, Validator, json_body
from common.auth import ROLES, ROLES_WITH_RESTAURANT
from common.errors import Conflict, ValidationFailed
from common.events import iso
from common.roles import Role

bp = Blueprint("users", __name__, url_prefix="/api/users")

PROFILE_COLUMNS = "id, role, display_name, restaurant_id, created_at"
_create_body = Validator({
    "id": Field("uuid", required=False),
    "role": Field("string", choices=ROLES),
    "display_name": Field("string", max=200),
    "restaurant_id": Field("uuid", required=False, nullable=True),
})


def profile_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "role": row["role"],
        "display_name": row["display_name"],
        "restaurant_id": str(row["restaurant_id"]) if row["restaurant_id"] else None,
        "created_at": iso(row["created_at"]),
    }


@bp.post("")
@require("admin", write=True)
def create_user() -> Any:
    clean = _create_body(json_body())
    role, restaurant_id = clean["role"], clean.get("restaurant_id")
    if role in ROLES_WITH_RESTAURANT and restaurant_id is None:
        raise ValidationFailed(f"a {role} user belongs to a restaurant", details={"restaurant_id": "required"})
    if role not in ROLES_WITH_RESTAURANT and restaurant_id is not None:
        raise ValidationFailed(f"a {role} user belongs to no restaurant",
                               details={"restaurant_id": f"only for roles {', '.join(ROLES_WITH_RESTAURANT)}"})
    user_id = clean.get("id") or str(uuid.uuid4())
    with services().pool.connection() as conn:
        if restaurant_id is not None and conn.execute(
            "SELECT 1 FROM restaurants WHERE id = %s", (restaurant_id,)
        ).fetchone() is None:
            raise ValidationFailed("no such restaurant", details={"restaurant_id": "unknown"})
        try:
            row = conn.execute(
                f"INSERT INTO profiles (id, role, display_name, restaurant_id) VALUES (%s, %s, %s, %s)"
                f" RETURNING {PROFILE_COLUMNS}",
                (user_id, role, clean["display_name"], restaurant_id),
            ).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict("a user with this id exists", details={"id": "already exists"}) from exc
        if role == Role.DRIVER:
            conn.execute("INSERT INTO drivers (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (user_id,))
    assert row is not None
    return jsonify(profile_json(row)), 201
