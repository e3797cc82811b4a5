"""A bounded in-process map whose entries expire: verified tokens, seen profiles, near-cache copies,
rate-limit leases and list keys all keep their per-process memories in one."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded in-process map whose entries expire: least recently used go first when full.

    Per process on purpose: a hit costs a dict lookup, where Redis would cost a round trip. No
    lock: under gevent nothing here yields, and with real threads (test clients) every step is
    one atomic dict operation that tolerates another thread having got there first.
    """

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            self._entries.pop(key, None)
            return None
        try:
            self._entries.move_to_end(key)
        except KeyError:  # another thread dropped it meanwhile; the value read is still good
            pass
        return found[1]

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        """Keep `value` for `ttl_s` (default the cache's own), never longer than the cache's ttl."""
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0:
            return
        self._entries[key] = (self.clock() + ttl, value)
        try:
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        except KeyError:
            pass

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def discard_where(self, doomed: Callable[[K], bool]) -> None:
        for key in [key for key in list(self._entries) if doomed(key)]:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
