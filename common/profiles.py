"""A user's profile row, created on their first authenticated request or connection."""

from __future__ import annotations

from typing import Any

import psycopg

from common.auth import Identity
from common.errors import Forbidden
from common.roles import Role


def ensure_profile(conn: psycopg.Connection[Any], who: Identity) -> None:
    """Create the caller's profile (and, for a driver, the driver row) if missing; idempotent.

    Runs under the caller's own claims: row-level security lets a user create only their own rows.
    """
    if who.restaurant_id is not None:
        known = conn.execute("SELECT 1 FROM restaurants WHERE id = %s", (who.restaurant_id,)).fetchone()
        if known is None:
            raise Forbidden("the token's restaurant does not exist")
    conn.execute(
        "INSERT INTO profiles (id, role, restaurant_id) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (who.user_id, who.role, who.restaurant_id),
    )
    if who.role == Role.DRIVER:
        # Only when the stored profile is a driver's: a token cannot turn another user into one.
        conn.execute("INSERT INTO drivers (id) SELECT id FROM profiles WHERE id = %s AND role = 'driver'"
                     " ON CONFLICT (id) DO NOTHING", (who.user_id,))
