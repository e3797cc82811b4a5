"""Recovery: the relay's watermark, replay of stored events, resync after Redis comes back.

A subscription first buffers live events (`Subscription.buffer`), replays the stored ones it
missed, then merges the buffer without duplicates (`Connection.go_live`). A replay is served, in
order of preference, from the channel's history in memory (`gateway.history`), from that history
after one read shared by every replay of the channel in the same moment, or, for a client further
behind than a shared read reaches, by paging PostgreSQL for that client alone. So a storm of N
reconnecting clients on one channel costs one query (or none), not N.

The watermark and the purge horizon are read for every subscribe, but a burst shares each read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import gevent
import redis
from gevent.event import AsyncResult
from psycopg_pool import ConnectionPool

from common import visibility
from common.errors import DmsError, Unavailable
from common.events import RELAY_WATERMARK_KEY, Event
from common.outbox import PURGED_CURSOR
from common.stores import STORE_ERRORS
from gateway import closes
from gateway.connection import Connection, Outgoing, Subscription
from gateway.history import ChannelHistory, SharedReads
from gateway.hub import Hub
from gateway.metrics import REPLAYS, STORE_READS

REPLAY_PAGE = 200
WATERMARK_WAIT_S = 3.0
T = TypeVar("T")
# What a failed replay or resync can raise; the subscriber gets an error or a reconnect request.
RECOVERY_ERRORS: tuple[type[Exception], ...] = (DmsError, *STORE_ERRORS)

_REPLAY = ("SELECT id, channels, event, data, created_at FROM events"
           " WHERE channels @> ARRAY[%s]::text[] AND id > %s AND id <= %s {visible} ORDER BY id LIMIT %s")


def outgoing_of_row(channel: str, row: dict[str, Any]) -> Outgoing:
    """A stored row as the hub would have delivered it live, tagged by the visibility rule."""
    frame = Event.from_row(row).frame(channel)
    return Outgoing.of(int(row["id"]), frame, visibility.tag_driver_event(channel, frame))


class Recovery:
    def __init__(self, pool: ConnectionPool[Any], redis_client: redis.Redis, hub: Hub) -> None:
        self.pool = pool
        self.redis = redis_client
        self.hub = hub
        # A shared read fetches half the history's bound, leaving room for the live edge.
        self.shared = SharedReads(pool, outgoing_of_row, rows=max(1, hub.history_events // 2),
                                  on_read=STORE_READS.labels("shared").inc)
        self._watermark = FreshRead(self._read_watermark)
        self._purged = FreshRead(self._read_purged)

    def watermark(self) -> int:
        """The id up to which the relay has published; events above it will arrive live.

        A burst of subscribes shares reads (`FreshRead`): one GET answers everyone who asked before it began.
        """
        return self._watermark.get()

    def _read_watermark(self) -> int:
        deadline = time.monotonic() + WATERMARK_WAIT_S
        while True:
            value = self.redis.get(RELAY_WATERMARK_KEY)
            if value is not None:
                return int(value)
            if time.monotonic() > deadline:
                raise Unavailable("the relay has not published its position yet")
            gevent.sleep(0.05)

    def anchored_watermark(self, channel: str) -> int:
        """The watermark, read once the hub holds `channel`; it anchors the channel's history."""
        return self.hub.anchor_history(channel, self.watermark)

    def purged_through(self) -> int:
        """The newest id housekeeping has deleted; below it `since` cannot be served.

        Read fresh for every subscribe with `since` (a purge takes effect at once), but a burst of
        them shares reads (`FreshRead`), so it costs a few queries, not one each.
        """
        return self._purged.get()

    def _read_purged(self) -> int:
        with self.pool.connection() as db:
            row = db.execute("SELECT last_id FROM relay_cursor WHERE name = %s", (PURGED_CURSOR,)).fetchone()
        return int(row["last_id"]) if row else 0

    def replay(self, conn: Connection, channel: str, sub: Subscription, *, after: int, upto: int) -> None:
        """Send the channel's stored events above `after` (at least up to `upto`), paced by the client's queue."""
        history = self.hub.histories.get(channel)
        if history is not None and history.covers(after):
            REPLAYS.labels("memory").inc()
            sub.last_id = max(self._send(conn, history.after(after), after), upto)
            return
        conn.transport.push()  # the store is read below: a corked subscribe writes what it holds first
        if history is not None and self.shared.widen(channel, history, after):
            REPLAYS.labels("shared_read").inc()
            last = self._send(conn, history.after(after), after)
        else:
            REPLAYS.labels("own_read").inc()
            last = self._replay_from_store(conn, channel, after=after, upto=_own_read_end(history, upto))
            if history is not None and history.covers(last):
                last = self._send(conn, history.after(last), last)
            elif last < upto:  # the history moved on meanwhile: the store serves the rest too
                last = self._replay_from_store(conn, channel, after=last, upto=upto)
        sub.last_id = max(last, upto)

    def _send(self, conn: Connection, outs: Iterable[Outgoing], last: int) -> int:
        for index, out in enumerate(outs):
            if index % REPLAY_PAGE == 0:
                self._wait_for_room(conn)
            if conn.closed:
                break
            assert out.event_id is not None
            if conn.may_see(out):
                conn.send_frame(out)
            last = out.event_id
        return last

    def _replay_from_store(self, conn: Connection, channel: str, *, after: int, upto: int) -> int:
        """Page the store for this client alone: it is behind what any shared read reaches."""
        visible, visible_params = visibility.replay_filter(conn.own_restaurant, channel)
        sql = _REPLAY.format(visible=visible)
        cursor = after
        while cursor < upto and not conn.closed:
            self._wait_for_room(conn)
            conn.transport.push()  # a corked subscribe must not hold its frames over the query
            with self.pool.connection() as db:
                rows = db.execute(sql, (channel, cursor, upto, *visible_params, REPLAY_PAGE)).fetchall()
            STORE_READS.labels("own").inc()
            if not rows:
                break
            for row in rows:
                conn.send_frame(outgoing_of_row(channel, row))
            cursor = int(rows[-1]["id"])
        return max(cursor, upto)

    @staticmethod
    def _wait_for_room(conn: Connection) -> None:
        conn.transport.push()
        while conn.queued_frames > conn.transport.max_queued_frames // 2 and not conn.closed:
            gevent.sleep(0.01)

    def resync(self, conn: Connection) -> None:
        """After Redis came back: refill every live subscription from history and the store, then go live."""
        for channel, sub in list(conn.subscriptions.items()):
            if sub.buffer is not None and not sub.held:
                continue  # a subscribe in progress replays by itself
            if sub.buffer is None:
                sub.buffer = []
            sub.held = False  # the buffer kept since the loss holds only live events after it
            try:
                watermark = self.anchored_watermark(channel)
                after = sub.last_id if sub.last_id is not None else watermark
                with conn.transport.corked():
                    self.replay(conn, channel, sub, after=after, upto=watermark)
                    conn.go_live(channel)
            except RECOVERY_ERRORS as exc:
                conn.log.warning("resync failed, closing so the client recovers: {}", exc)
                conn.close(closes.RESYNC_FAILED)
                return


class FreshRead(Generic[T]):
    """Callers share reads that begin after they asked, never one already under way.

    A subscriber must see the watermark as it was after its subscription was confirmed; joining a
    read that began earlier could answer with an older value. So a caller waits for the read under
    way to end and takes the next one, which serves everyone who arrived meanwhile.
    """

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._next: AsyncResult[T] | None = None
        self._reader: gevent.Greenlet | None = None

    def get(self) -> T:
        if self._next is None:
            self._next = AsyncResult()
            if self._reader is None or self._reader.dead:
                self._reader = gevent.spawn(self._serve)
        return self._next.get()

    def _serve(self) -> None:
        # No switch between the last check and this greenlet's end, so a caller never finds it
        # alive yet done.
        while self._next is not None:
            batch, self._next = self._next, None
            try:
                batch.set(self._read())
            except Exception as exc:
                batch.set_exception(exc)


def _own_read_end(history: ChannelHistory | None, upto: int) -> int:
    """Where a client's own read stops: where the channel's history takes over, if it is anchored."""
    return upto if history is None or history.floor is None else min(upto, history.floor)
