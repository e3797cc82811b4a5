"""Who may subscribe to which channel; the gateway and the REST API apply the same rules."""

from __future__ import annotations

from typing import Any

import psycopg

from common.auth import Identity
from common.channels import parse_channel
from common.errors import Forbidden
from common.orders import ACTIVE_STATUSES
from common.roles import ROLES_WITH_RESTAURANT, Role


def driver_visible_to_restaurant(conn: psycopg.Connection[Any], restaurant_id: str, driver_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM orders WHERE driver_id = %s AND restaurant_id = %s AND status = ANY(%s) LIMIT 1",
        (driver_id, restaurant_id, list(ACTIVE_STATUSES)),
    ).fetchone()
    return row is not None


def allowed_without_store(who: Identity, channel: str) -> str | None:
    """The canonical channel if the claims alone allow it, None if only the store can say.

    Raises InvalidChannel. Admins, and restaurants on their own board, need no query: a burst of
    such subscribes must not queue for pool connections.
    """
    kind, key = parse_channel(channel)
    canonical = kind if key is None else f"{kind}:{key}"
    if who.is_admin:
        return canonical
    if kind == "restaurant" and who.role in ROLES_WITH_RESTAURANT and key == who.restaurant_id:
        return canonical
    if kind == "driver" and who.role == Role.DRIVER and key == who.user_id:
        return canonical
    return None


def check_subscribe(conn: psycopg.Connection[Any], who: Identity, channel: str) -> str:
    """Return the canonical channel name, or raise InvalidChannel / Forbidden."""
    allowed = allowed_without_store(who, channel)
    if allowed is not None:
        return allowed
    kind, key = parse_channel(channel)
    canonical = kind if key is None else f"{kind}:{key}"
    if kind == "order" and key is not None:
        row = conn.execute("SELECT restaurant_id, driver_id FROM orders WHERE id = %s", (key,)).fetchone()
        if row is not None:
            if who.role in ROLES_WITH_RESTAURANT and str(row["restaurant_id"]) == who.restaurant_id:
                return canonical
            if who.role == Role.DRIVER and row["driver_id"] is not None and str(row["driver_id"]) == who.user_id:
                return canonical
    if kind == "driver" and key is not None:
        if who.role == Role.DRIVER and key == who.user_id:
            return canonical
        if who.role in ROLES_WITH_RESTAURANT and who.restaurant_id and driver_visible_to_restaurant(
            conn, who.restaurant_id, key
        ):
            return canonical
    raise Forbidden(f"not allowed to subscribe to {canonical}")
