"""Recovery: the relay's watermark, replay of stored events, resync after Redis comes back.

A subscription first buffers live events (`Subscription.buffer`), replays the stored ones up to
the watermark from PostgreSQL, then merges the buffer without duplicates (`Connection.go_live`).
A restaurant replaying a driver's channel gets only what common.visibility lets it see, filtered in SQL.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import redis
from psycopg_pool import ConnectionPool

from common import visibility
from common.errors import DmsError, Unavailable
from common.events import RELAY_WATERMARK_KEY, Event
from common.outbox import PURGED_CURSOR
from common.stores import STORE_ERRORS
from gateway import closes
from gateway.connection import Connection, Outgoing, Subscription

REPLAY_PAGE = 200
WATERMARK_WAIT_S = 3.0
# What a failed replay or resync can raise; the subscriber gets an error or a reconnect request.
RECOVERY_ERRORS: tuple[type[Exception], ...] = (DmsError, *STORE_ERRORS)

_REPLAY = ("SELECT id, channels, event, data, created_at FROM events"
           " WHERE channels @> ARRAY[%s]::text[] AND id > %s AND id <= %s {visible} ORDER BY id LIMIT %s")


class Recovery:
    def __init__(self, pool: ConnectionPool[Any], redis_client: redis.Redis) -> None:
        self.pool = pool
        self.redis = redis_client

    def watermark(self) -> int:
        """The id up to which the relay has published; events above it will arrive live."""
        deadline = time.monotonic() + WATERMARK_WAIT_S
        while True:
            value = self.redis.get(RELAY_WATERMARK_KEY)
            if value is not None:
                return int(value)
            if time.monotonic() > deadline:
                raise Unavailable("the relay has not published its position yet")
            gevent.sleep(0.05)

    def purged_through(self) -> int:
        with self.pool.connection() as db:
            row = db.execute("SELECT last_id FROM relay_cursor WHERE name = %s", (PURGED_CURSOR,)).fetchone()
        return int(row["last_id"]) if row else 0

    def replay(self, conn: Connection, channel: str, sub: Subscription, *, after: int, upto: int) -> None:
        """Send the channel's stored events in (after, upto], paced by the client's queue."""
        visible, visible_params = visibility.replay_filter(conn.own_restaurant, channel)
        sql = _REPLAY.format(visible=visible)
        cursor = after
        while cursor < upto and not conn.closed:
            while conn.queued_frames > conn.transport.max_queued_frames // 2 and not conn.closed:
                gevent.sleep(0.01)
            with self.pool.connection() as db:
                rows = db.execute(sql, (channel, cursor, upto, *visible_params, REPLAY_PAGE)).fetchall()
            if not rows:
                break
            for row in rows:
                conn.send_frame(Outgoing.of(int(row["id"]), Event.from_row(row).frame(channel)))
            cursor = int(rows[-1]["id"])
        sub.last_id = max(after, upto)

    def resync(self, conn: Connection) -> None:
        """After Redis came back: refill every live subscription from PostgreSQL, then go live."""
        for channel, sub in list(conn.subscriptions.items()):
            if sub.buffer is not None:
                continue  # a subscribe in progress replays by itself
            sub.buffer = []
            try:
                watermark = self.watermark()
                after = sub.last_id if sub.last_id is not None else watermark
                self.replay(conn, channel, sub, after=after, upto=watermark)
            except RECOVERY_ERRORS as exc:
                conn.log.warning("resync failed, closing so the client recovers: {}", exc)
                conn.close(closes.RESYNC_FAILED)
                return
            conn.go_live(channel)
