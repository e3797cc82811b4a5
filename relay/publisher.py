"""The relay's publisher, chosen by its client: one Redis node, or a Redis Cluster's shards.

Either way a gateway that confirms its subscription to a channel and then reads the watermark gets
every event of that channel above the watermark live (gateway/history.py rests on it):

- one Redis: the PUBLISHes and the watermark go in one MULTI/EXEC (packed, relay/publish.py), so a
  reader sees the whole batch live or a watermark that covers it, never neither;
- a cluster: no transaction spans shards, so the watermark moves first and the SPUBLISHes follow
  (one pipeline, grouped per shard by the client). An event is published only after the watermark
  covers it: whoever read an older watermark is subscribed already and gets the event live; whoever
  read the newer one replays it from PostgreSQL, where it is committed (and may see it live too;
  a subscription drops repeated ids). On one node this would cost a round trip, so it is cluster only.

  The watermark must also survive its shard's failover: a primary killed with an SPUBLISH still in
  its output buffers loses that message, and a replica promoted without the watermark that covers
  it would let a resynchronising gateway believe the event was never published. So the SET waits
  (WAIT, on the same connection) until a replica has it; without a replica, or past the wait, it
  goes on: the relay never stops for Redis's redundancy.
"""

from __future__ import annotations

from typing import Protocol, cast

import redis
from redis.cluster import RedisCluster

from common.events import RELAY_WATERMARK_KEY
from common.redis_client import is_cluster
from relay.publish import publish_batch

# How long a watermark SET waits for a replica before the batch is published anyway.
WATERMARK_REPLICA_WAIT_MS = 50


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
        self._move_watermark(watermark)
        pipe = self.client.pipeline(transaction=False)
        for channel, payload in messages:
            pipe.spublish(channel, payload)
        pipe.execute()


    def _move_watermark(self, watermark: int) -> None:
        cluster = cast(RedisCluster, self.client)
        if cluster.get_node_from_key(RELAY_WATERMARK_KEY, replica=True) is None:
            self.client.set(RELAY_WATERMARK_KEY, watermark)  # no replica to wait for
            return
        # WAIT counts the writes of its own connection: both commands go on the owner's one pipeline.
        # A MOVED reply (the slot moved) fails the batch; the relay starts over through the cluster
        # client, which learns the new owner.
        owner = cluster.get_redis_connection(cluster.get_node_from_key(RELAY_WATERMARK_KEY))
        with owner.pipeline(transaction=False) as pipe:
            pipe.set(RELAY_WATERMARK_KEY, watermark)
            pipe.execute_command("WAIT", 1, WATERMARK_REPLICA_WAIT_MS)
            pipe.execute()


def publisher_for(client: redis.Redis) -> Publisher:
    return ShardedPublisher(client) if is_cluster(client) else NodePublisher(client)
