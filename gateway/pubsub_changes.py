"""Subscription changes for a pub/sub connection that only its reader greenlet touches.

redis-py reconnects a dropped connection inside whichever greenlet notices the drop first. On a
pub/sub connection both the reader and a client's greenlet (un)subscribing on it could notice:
two greenlets then reconnected and read one socket, and gevent refused the second reader
(ConcurrentObjectUseError) or the reader was left waiting inside a reconnect's handshake for tens
of seconds (fault 6, docs/FAULTS.md).
So other greenlets only mark the channels whose upstream subscription may have to change; the
reader applies the marks between reads, bringing each channel in line with what is wanted at that
moment, and a mark wakes it from its wait for Redis. A burst of subscribes becomes one command.
"""

from __future__ import annotations

from typing import Any

import redis
from gevent import get_hub
from gevent.event import Event as GEvent

_READ = 1  # libev/libuv's read-readiness flag for an io watcher
_NONE: frozenset[str] = frozenset()


class PendingChanges:
    def __init__(self) -> None:
        self._channels: set[str] = set()
        self._wake = GEvent()

    def mark(self, channel: str) -> None:
        """`channel`'s wanted state may differ from Redis's: the reader will look at it."""
        self._channels.add(channel)
        self._wake.set()

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def take(self) -> set[str] | frozenset[str]:
        """The marked channels, unmarked: for the reader to apply (or to drop, when it subscribes all)."""
        if not self._channels:
            return _NONE  # the reader asks once per message: no new set when nothing is marked
        channels, self._channels = self._channels, set()
        return channels

    def wait(self, pubsub: Any, timeout_s: float) -> None:
        """Return once the connection has bytes to read, a channel is marked, or `timeout_s` passed.

        Call only after the pub/sub's own buffer came up empty (get_message returned None): bytes it
        already holds do not wake this wait.
        """
        if self._channels:
            return
        if not pubsub.subscribed:  # redis-py reads nothing then: only a mark can change that
            self._wake.wait(timeout_s)
            self._wake.clear()
            return
        sock = getattr(pubsub.connection, "_sock", None)  # redis-py keeps its socket private
        if sock is None:
            raise redis.ConnectionError("the pub/sub connection is closed")
        watcher = get_hub().loop.io(sock.fileno(), _READ)
        try:
            watcher.start(self._wake.set)
            self._wake.wait(timeout_s)
        finally:
            watcher.stop()
            watcher.close()
            self._wake.clear()
