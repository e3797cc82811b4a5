"""Per-process copies of Redis cache entries, dropped the moment any process invalidates them.

A cached catalogue read would otherwise cost a Redis round trip, and on loopback that round trip
(the kernel waking Redis and back) costs more CPU than all of Flask's own work for the request.
So each API process keeps the stored texts it has read, and a write anywhere publishes the
namespace it changed on `dms:cache:changed`; every process's listener drops its copies of that
namespace when the message arrives (about a millisecond later).

Staleness is bounded three ways:
- copies are used only while the listener is subscribed; on every (re)subscribe the whole near
  cache is dropped, since messages published while it was away are lost;
- an invalidation that lands while a reader is fetching from Redis wins: the reader's copy is
  kept only if the namespace's epoch did not move meanwhile;
- every copy expires after `ttl_s` anyway (a subscription that dies without an error).

Hits are counted here and added to Redis's shared hit counter by the listener once a second
(`flush_hits`), so a near hit needs no round trip for its bookkeeping either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import gevent
import redis
from loguru import logger
from redis.cluster import RedisCluster

from common.redis_client import is_cluster
from common.stores import STORE_ERRORS
from common.ttl_cache import TtlCache

CHANNEL = "dms:cache:changed"
DEFAULT_TTL_S = 10.0
DEFAULT_MAX_ENTRIES = 2_000
FLUSH_EVERY_S = 1.0
RETRY_S = 1.0


@dataclass(frozen=True)
class NearEntry:
    raw: str
    etag: str
    body: bytes = b""  # the response body, ready to send (the text and a newline, encoded)


class NearCache:
    """Entries by (namespace, key), valid only while `listening`; one per process."""

    def __init__(self, *, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.entries: TtlCache[tuple[str, str], NearEntry] = TtlCache(max_entries=max_entries, ttl_s=ttl_s,
                                                                       clock=clock)
        self.listening = False
        self.pending_hits = 0
        self._epochs: dict[str, int] = {}
        self._reset_count = 0

    def epoch(self, namespace: str) -> tuple[int, int]:
        """Read before fetching from Redis; `put` keeps the copy only if it is unchanged then."""
        return self._reset_count, self._epochs.get(namespace, 0)

    def get(self, namespace: str, key: str) -> NearEntry | None:
        if not self.listening:
            return None
        found = self.entries.get((namespace, key))
        if found is not None:
            self.pending_hits += 1
        return found

    def peek(self, namespace: str, key: str) -> bool:
        """Whether `get` would answer now (not counted as a hit)."""
        return self.listening and self.entries.get((namespace, key)) is not None

    def put(self, namespace: str, key: str, entry: NearEntry, *, epoch: tuple[int, int]) -> None:
        if self.listening and self.epoch(namespace) == epoch:
            self.entries.put((namespace, key), entry)

    def invalidate(self, namespace: str) -> None:
        self._epochs[namespace] = self._epochs.get(namespace, 0) + 1
        self.entries.discard_where(lambda key: key[0] == namespace)

    def reset(self) -> None:
        """Forget everything: the listener lost (or has just made) its subscription."""
        self._reset_count += 1
        self.entries.clear()

    def take_hits(self) -> int:
        hits, self.pending_hits = self.pending_hits, 0
        return hits


def publish_change(client: redis.Redis, namespace: str) -> None:
    # Plain PUBLISH also on a Redis Cluster: it reaches every node, so each process's listener may
    # subscribe wherever its client connects.
    client.publish(CHANNEL, namespace)


def flush_hits(near: NearCache, client: redis.Redis, hits_key: str) -> None:
    """Add this process's near hits to the shared counter (given back if Redis refuses)."""
    hits = near.take_hits()
    if not hits:
        return
    try:
        client.incrby(hits_key, hits)
    except STORE_ERRORS:
        near.pending_hits += hits
        raise


def run_listener(near: NearCache, client: redis.Redis, hits_key: str, *, flush_every_s: float = FLUSH_EVERY_S,
                 retry_s: float = RETRY_S, stopped: Callable[[], bool] = lambda: False) -> None:
    """Follow `CHANNEL` until killed (a greenlet of `python -m api`) or `stopped()`; reconnects by itself."""
    while not stopped():
        pubsub = _change_listener(client)
        try:
            pubsub.subscribe(CHANNEL)
            while not stopped():
                message = pubsub.get_message(timeout=flush_every_s)
                if message is not None and message["type"] == "subscribe":
                    near.reset()  # whatever was published before this point may have been missed
                    near.listening = True
                    logger.debug("near cache listening")
                elif message is not None and message["type"] == "message":
                    near.invalidate(str(message["data"]))
                flush_hits(near, client, hits_key)
        except STORE_ERRORS as exc:
            if near.listening:
                logger.warning("near cache off until Redis answers again: {}", type(exc).__name__)
        finally:
            near.listening = False  # changes may be missed from now on: nothing held may be served
            near.reset()
            try:
                pubsub.close()
            except STORE_ERRORS:
                pass
        if not stopped():
            gevent.sleep(retry_s)


def _change_listener(client: redis.Redis) -> Any:
    """A pub/sub connection for `CHANNEL`. On a Redis Cluster a plain PUBLISH reaches every node, so
    any node will do: a random one at each attempt, so that a dead node is not tried again and again
    while the client's slot map still names it."""
    if is_cluster(client):
        cluster = cast(RedisCluster, client)
        return cluster.get_redis_connection(cluster.get_random_node()).pubsub(ignore_subscribe_messages=False)
    return client.pubsub(ignore_subscribe_messages=False)
