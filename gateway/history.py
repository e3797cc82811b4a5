"""Recent events per channel, kept in gateway memory so that recovery costs PostgreSQL per channel.

When a gateway dies, its clients reconnect to the survivors within seconds and each resubscribes
with `since`. Reading PostgreSQL once per client would cost N queries at the moment the database
is busiest. Instead the hub keeps, for every channel it holds, the stored events it has received
(as the `Outgoing` it built for them: frame bytes are made once and serve a replay too), and knows
the range over which that record is complete. A `since` inside the range is served from memory.
A `since` below it asks for a shared read (`SharedReads`): the requests of one channel that arrive
within a short window wait for one query, which fetches the newest events below the range and
widens it for everyone after them. Only a client further behind than that pays a read of its own.

Completeness rests on the relay publishing a stored event and moving the watermark in one Redis
transaction (on a cluster: moving the watermark before publishing, relay/publisher.py): once the
hub's subscription to a channel is confirmed, every event above the watermark read after that moment
arrives on the subscription, in id order (`anchor`).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.event import Event as GEvent
from psycopg_pool import ConnectionPool

MAX_EVENTS_PER_CHANNEL = 2000
SHARED_READ_ROWS = 1000
SHARED_READ_WINDOW_S = 0.02

_NEWEST_BELOW = ("SELECT id, channels, event, data, created_at FROM events"
                 " WHERE channels @> ARRAY[%s]::text[] AND id <= %s ORDER BY id DESC LIMIT %s")


class Stored(Protocol):
    """What the history keeps: anything with the id of a stored event (`Outgoing`)."""

    @property
    def event_id(self) -> int | None: ...


class ChannelHistory:
    """The stored events of one channel with ids in (floor, newest], complete over that range.

    `floor` is None until the first subscriber anchors it: until then nothing is known complete.
    """

    __slots__ = ("_ids", "events", "floor", "generation", "max_events")

    def __init__(self, *, max_events: int = MAX_EVENTS_PER_CHANNEL) -> None:
        self.max_events = max_events
        self.events: deque[Any] = deque()
        self._ids: deque[int] = deque()
        self.floor: int | None = None
        # Bumped by every reset: an anchor read before the reset must not land after it.
        self.generation = 0

    def append(self, out: Stored) -> None:
        """A live stored event from the hub, in id order; ephemeral and repeated ones are skipped."""
        event_id = out.event_id
        if event_id is None or (self._ids and event_id <= self._ids[-1]):
            return
        # At or below the floor: an event published before the anchor's watermark read that the hub
        # dispatches only now. The range below the floor is the store's (a shared read brings it).
        if self.floor is not None and event_id <= self.floor:
            return
        self.events.append(out)
        self._ids.append(event_id)
        self._trim()

    def anchor(self, watermark: int, *, generation: int) -> None:
        """Every event above `watermark` arrives live from now on: the record is complete above it.

        `generation` is the one seen when the subscription was confirmed, before the watermark was read.
        """
        if self.floor is not None or generation != self.generation:
            return
        self.floor = watermark
        while self._ids and self._ids[0] <= watermark:
            self._ids.popleft()
            self.events.popleft()

    def covers(self, since: int) -> bool:
        return self.floor is not None and since >= self.floor

    def after(self, since: int) -> list[Any]:
        """The kept events with ids above `since`, oldest first (complete if `covers(since)`)."""
        start = bisect.bisect_right(self._ids, since)
        return [self.events[index] for index in range(start, len(self.events))]

    def widen(self, older: list[Stored], *, read_below: int, floor: int) -> None:
        """Events read below `read_below`, newest first; the record now starts at `floor`.

        A read is dropped if the record moved meanwhile (trimmed or reset): joining it would leave a hole.
        """
        if self.floor != read_below or floor >= read_below:
            return
        for out in older:
            event_id = out.event_id
            assert event_id is not None
            self.events.appendleft(out)
            self._ids.appendleft(event_id)
        self.floor = floor
        self._trim()

    def _trim(self) -> None:
        while len(self._ids) > self.max_events:
            self.floor = self._ids.popleft()
            self.events.popleft()

    def reset(self) -> None:
        """The subscription was lost (Redis reconnect): nothing is known complete until anchored again."""
        self.events.clear()
        self._ids.clear()
        self.floor = None
        self.generation += 1


class SharedReads:
    """One PostgreSQL read per channel for all the replays that need history below what memory holds.

    `to_outgoing(channel, row)` turns a stored row into what subscribers are sent; `on_read` is told
    of each query (metrics).
    """

    def __init__(self, pool: ConnectionPool[Any], to_outgoing: Callable[[str, dict[str, Any]], Any], *,
                 rows: int = SHARED_READ_ROWS, window_s: float = SHARED_READ_WINDOW_S,
                 on_read: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self.to_outgoing = to_outgoing
        self.rows = rows
        self.window_s = window_s
        self.on_read = on_read
        self._reading: dict[str, GEvent] = {}

    def widen(self, channel: str, history: ChannelHistory, since: int) -> bool:
        """Make `history` cover `since` if one shared read can; True if it now does.

        A replay that finds a read of its channel under way waits for it and looks again, so the
        requests of one window cost one query; the store's errors reach the caller.
        """
        issued = False
        for _ in range(4):
            if history.covers(since):
                return True
            pending = self._reading.get(channel)
            if pending is not None:
                pending.wait()
                continue
            if issued:
                break  # this caller's own read did not reach back far enough: it pages the store alone
            issued = True
            done = self._reading[channel] = GEvent()
            try:
                gevent.sleep(self.window_s)  # let the rest of the burst join this read
                self._read(channel, history)
            finally:
                del self._reading[channel]
                done.set()
        return history.covers(since)

    def _read(self, channel: str, history: ChannelHistory) -> None:
        floor = history.floor
        if floor is None:
            return
        with self.pool.connection() as db:
            rows = db.execute(_NEWEST_BELOW, (channel, floor, self.rows)).fetchall()
        if self.on_read is not None:
            self.on_read()
        older = [self.to_outgoing(channel, row) for row in rows]
        # Fewer rows than asked: the store holds nothing older on this channel (or it was purged,
        # which the subscribe's `recovered` answer accounts for).
        new_floor = int(rows[-1]["id"]) - 1 if len(rows) == self.rows else 0
        history.widen(older, read_below=floor, floor=new_floor)

