"""Who may see what: the one home of the visibility rule for channels and their events.

A restaurant (or its demo user) sees its own restaurant's channel and its own orders; it sees a
driver's channel only while it has an active order with that driver, and on that channel only its
own orders' events (plus the driver's own events, which name no restaurant). A driver sees its own
channel and the orders it carries. Admins see everything. Every place that applies the rule calls
this module: the subscribe check (gateway and REST), the gateway's periodic re-check, the hub's
tagging of events on `driver:*`, each connection's filter and the replay query. Row-level security
(sql/0007, sql/0013) is the database's own layer underneath.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from common.auth import Identity
from common.channels import parse_channel
from common.errors import Forbidden
from common.orders import ACTIVE_STATUSES
from common.roles import ROLES_WITH_RESTAURANT, Role

DRIVER_PREFIX = "driver:"
# An order event after which a restaurant may have lost its view of the driver: re-check at once.
_RIGHT_ENDING_STATUSES = ("delivered", "cancelled")
_RIGHT_CHANGING_EVENT = "order.assigned"

# The rule "restaurant R sees driver D": R has an active order carried by D. Written once, for a
# batch of (R, D) pairs; one pair is a batch of one.
_SEEING_PAIRS = (
    "SELECT DISTINCT o.restaurant_id::text AS r, o.driver_id::text AS d FROM orders o"
    " JOIN unnest(%s::uuid[], %s::uuid[]) AS p(r, d) ON o.restaurant_id = p.r AND o.driver_id = p.d"
    " WHERE o.status = ANY(%s)"
)
# On `driver:*` a restaurant replays its own orders' events and the driver's own (no restaurant).
_REPLAY_OWN_ONLY = "AND (NOT data ? 'restaurant_id' OR data->>'restaurant_id' = %s)"


def own_restaurant(who: Identity) -> str | None:
    """The restaurant whose view limits this caller on drivers' channels; None sees all it may subscribe."""
    return who.restaurant_id if who.role in ROLES_WITH_RESTAURANT else None


def restaurants_seeing_drivers(conn: psycopg.Connection[Any], pairs: Iterable[tuple[str, str]]
                               ) -> set[tuple[str, str]]:
    """Which (restaurant, driver) pairs the rule allows now."""
    pairs = list(pairs)
    if not pairs:
        return set()
    rows = conn.execute(_SEEING_PAIRS, ([r for r, _ in pairs], [d for _, d in pairs], list(ACTIVE_STATUSES))
                        ).fetchall()
    return {(row["r"], row["d"]) for row in rows}


def driver_visible_to_restaurant(conn: psycopg.Connection[Any], restaurant_id: str, driver_id: str) -> bool:
    return bool(restaurants_seeing_drivers(conn, [(restaurant_id, driver_id)]))


def allowed_without_store(who: Identity, channel: str) -> str | None:
    """The canonical channel if the claims alone allow it, None if only the store can say.

    Raises InvalidChannel. Admins, restaurants on their own board and drivers on their own channel
    need no query: a burst of such subscribes must not queue for pool connections.
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
        if who.role in ROLES_WITH_RESTAURANT and who.restaurant_id and driver_visible_to_restaurant(
            conn, who.restaurant_id, key
        ):
            return canonical
    raise Forbidden(f"not allowed to subscribe to {canonical}")


@dataclass(frozen=True, slots=True)
class DriverEventTag:
    """What the rule needs of an order event carried by `driver:*`, read once per message."""

    restaurant: str  # only admins, the driver and this restaurant get the event
    may_end_rights: bool  # an assignment or a final status: restaurants' views may have changed


def tag_driver_event(channel: str, frame: str) -> DriverEventTag | None:
    """The tag of a stored event on a driver's channel; None for a driver's own events (all may see them)."""
    if not channel.startswith(DRIVER_PREFIX):
        return None
    try:
        body = json.loads(frame)
    except ValueError:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not data.get("restaurant_id"):
        return None
    restaurant = data["restaurant_id"]
    ends = body.get("event") == _RIGHT_CHANGING_EVENT or data.get("status") in _RIGHT_ENDING_STATUSES
    return DriverEventTag(str(restaurant), ends)


def may_see_event(viewer_restaurant: str | None, tag: DriverEventTag | None) -> bool:
    """The per-connection filter: a restaurant's subscriber skips other restaurants' order events."""
    return tag is None or viewer_restaurant is None or tag.restaurant == viewer_restaurant


def replay_filter(viewer_restaurant: str | None, channel: str) -> tuple[str, tuple[Any, ...]]:
    """The replay query's extra condition and parameters for this viewer on this channel."""
    if viewer_restaurant is None or not channel.startswith(DRIVER_PREFIX):
        return "", ()
    return _REPLAY_OWN_ONLY, (viewer_restaurant,)


def driver_of(channel: str) -> str | None:
    """The driver id of a `driver:*` channel, else None."""
    return channel[len(DRIVER_PREFIX):] if channel.startswith(DRIVER_PREFIX) else None
