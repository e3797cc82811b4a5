"""Privacy over time: end restaurants' subscriptions to drivers' channels once the rule no longer allows them.

The rule itself is common.visibility's; this module only applies it to the live connections,
every RIGHTS_RECHECK_S and at once after an event that may end a right (an assignment, a
delivered or cancelled order, as the hub tags it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import psycopg_pool
from gevent.event import Event as GEvent
from loguru import logger

from common import visibility
from common.db import SERVICE, claims
from gateway.connection import Connection, Outgoing
from gateway.hub import Hub

RIGHTS_RECHECK_S = 2.0


class RightsCheck:
    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], hub: Hub,
                 connections: Callable[[], Iterable[Connection]]) -> None:
        self.pool = pool
        self.hub = hub
        self.connections = connections
        self._now = GEvent()

    def driver_order_event(self, channel: str, out: Outgoing) -> None:
        """An order event on `driver:*`: re-check at once when it may end a restaurant's right."""
        if out.tag is not None and out.tag.may_end_rights:
            self._now.set()

    def run(self, running: Callable[[], bool]) -> None:
        while running():
            self._now.wait(timeout=RIGHTS_RECHECK_S)
            self._now.clear()
            try:
                self.recheck()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                logger.warning("could not re-check restaurants' driver subscriptions: {}", exc)

    def recheck(self) -> None:
        """End every restaurant subscription to `driver:D` that the rule no longer allows."""
        held: dict[tuple[str, str], list[Connection]] = {}
        for conn in list(self.connections()):
            if conn.own_restaurant is None:
                continue
            for channel in list(conn.subscriptions):
                driver = visibility.driver_of(channel)
                if driver is not None:
                    held.setdefault((conn.own_restaurant, driver), []).append(conn)
        if not held:
            return
        with claims(SERVICE), self.pool.connection() as db:
            allowed = visibility.restaurants_seeing_drivers(db, held)
        for (restaurant, driver), conns in held.items():
            if (restaurant, driver) in allowed:
                continue
            channel = visibility.DRIVER_PREFIX + driver
            for conn in conns:
                end_subscription(self.hub, conn, channel, "no active order with the driver")


def end_subscription(hub: Hub, conn: Connection, channel: str, why: str) -> None:
    """A right ended: drop the subscription and tell the client `unsubscribed` / `forbidden`."""
    if conn.subscriptions.pop(channel, None) is None:
        return
    hub.remove(conn, channel)
    conn.log.info("subscription to {} ended: {}", channel, why)
    conn.send_json({"type": "unsubscribed", "channel": channel, "ref": None, "reason": "forbidden"})
