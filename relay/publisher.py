"""How the relay hands a batch of events to Redis: to one node in one MULTI, or to a cluster's shards.

Either way a gateway that confirms its subscription to a channel and then reads the watermark gets
every event of that channel above the watermark live (gateway/history.py rests on it):

- one Redis: the PUBLISHes and the watermark go in one MULTI/EXEC, so a reader sees the whole batch
  live or a watermark that covers it, never neither;
- a cluster: no transaction spans shards, so the watermark moves first and the SPUBLISHes follow
  (one pipeline, grouped per shard by the client). An event is published only after the watermark
  covers it: whoever read an older watermark is subscribed already and gets the event live; whoever
  read the newer one replays it from PostgreSQL, where it is committed (and may see it live too;
  a subscription drops repeated ids). On one node this would cost a round trip, so it is cluster only.
"""

from __future__ import annotations

from typing import Protocol

import redis

from common.events import RELAY_WATERMARK_KEY
from common.redis_client import is_cluster
from relay.publish import publish_batch


class Publisher(Protocol):
    def publish(self, messages: list[tuple[str, str]], *, watermark: int) -> None:
        """Publish `(redis channel, payload)` pairs in order and move the watermark to `watermark`."""


class NodePublisher:
    """One Redis: the batch and its watermark in one packed MULTI/EXEC, one round trip (relay/publish.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, messages: list[tuple[str, str]], *, watermark: int) -> None:
        publish_batch(self.client, messages, watermark_key=RELAY_WATERMARK_KEY, watermark=watermark)


class ShardedPublisher:
    """A Redis Cluster: the watermark first, then SPUBLISH to each channel's shard, in order per channel."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, messages: list[tuple[str, str]], *, watermark: int) -> None:
        self.client.set(RELAY_WATERMARK_KEY, watermark)
        pipe = self.client.pipeline(transaction=False)
        for channel, payload in messages:
            pipe.spublish(channel, payload)
        pipe.execute()


def publisher_for(client: redis.Redis) -> Publisher:
    return ShardedPublisher(client) if is_cluster(client) else NodePublisher(client)
