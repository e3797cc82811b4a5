"""Subscribe and unsubscribe: the visibility check, the hub registration, recovery with `since`, going live.

A subscribe runs in a greenlet of its own (it waits on PostgreSQL and Redis); the protocol
session counts it as pending until `subscribe_done`. History and the watermark are recovery's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import gevent
from psycopg_pool import ConnectionPool

from common.auth import claims_of
from common.db import claims
from common.errors import DmsError
from common.logging import log_context
from common.visibility import allowed_without_store, check_subscribe
from gateway.connection import Connection
from gateway.hub import Hub
from gateway.protocol import Subscribe, Unsubscribe, error, subscribed
from gateway.recovery import RECOVERY_ERRORS, Recovery


class Subscriptions:
    def __init__(self, pool: ConnectionPool[Any], hub: Hub, recovery: Recovery) -> None:
        self.pool = pool
        self.hub = hub
        self.recovery = recovery

    def subscribe(self, conn: Connection, action: Subscribe) -> None:
        gevent.spawn(self._subscribe, conn, action)

    def unsubscribe(self, conn: Connection, action: Unsubscribe) -> None:
        self.hub.remove(conn, action.channel)
        conn.send_json({"type": "unsubscribed", "channel": action.channel, "ref": action.ref})

    def _subscribe(self, conn: Connection, action: Subscribe) -> None:
        with log_context(connection_id=conn.id):  # a new greenlet starts with an empty context
            self._subscribe_in_context(conn, action)

    def _subscribe_in_context(self, conn: Connection, action: Subscribe) -> None:
        channel, ref = action.channel, action.ref
        held = conn.subscriptions.get(channel)
        if held is not None:
            conn.send_json(subscribed(channel, ref, held.last_id, False))
            conn.session.subscribe_done(channel, ok=True)
            return
        try:
            if allowed_without_store(conn.identity, channel) is None:
                with claims(claims_of(conn.identity)), self.pool.connection() as db:
                    check_subscribe(db, conn.identity, channel)
            sub = conn.session.hold(channel)
            self.hub.add(conn, channel)
            watermark = self.recovery.anchored_watermark(channel)
            recovered = action.since is not None and action.since >= self.recovery.purged_through()
            # The reply, the replay and the live events held meanwhile leave in as few writes as
            # recovery's waits allow (it pushes before each): in a reconnect storm, one each.
            with conn.transport.corked():
                conn.send_json(subscribed(channel, ref, watermark, recovered))
                if recovered:
                    assert action.since is not None
                    self.recovery.replay(conn, channel, sub, after=action.since, upto=watermark)
                else:
                    sub.last_id = watermark
                conn.go_live(channel)
            # The right may have ended during the replay (gateway.rights): then nothing is held.
            conn.session.subscribe_done(channel, ok=conn.subscriptions.get(channel) is sub)
        except RECOVERY_ERRORS as exc:
            conn.subscriptions.pop(channel, None)
            self.hub.remove(conn, channel)
            conn.session.subscribe_done(channel, ok=False)
            code = exc.code if isinstance(exc, DmsError) else "unavailable"
            message = exc.message if isinstance(exc, DmsError) else "the event store is unavailable"
            conn.send_json(error(code, message, ref).body)

    def resync_all(self, connections: Iterable[Connection]) -> None:
        """After Redis came back: refill every live subscription (one store read per channel), then go live."""
        for conn in list(connections):
            gevent.spawn(self._resync, conn)

    def _resync(self, conn: Connection) -> None:
        with log_context(connection_id=conn.id):
            self.recovery.resync(conn)
