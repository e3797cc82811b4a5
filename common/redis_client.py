"""Redis clients: one pool per process, short timeouts so a dead Redis fails fast.

A process talks to one Redis (`REDIS_URL`) or to a Redis Cluster (`REDIS_CLUSTER_NODES`, docs/CLUSTER.md).
`RedisCluster` answers the same commands as `redis.Redis`, so callers hold either under the
`redis.Redis` type; the few places that must act differently on a cluster ask `is_cluster`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, cast

import redis
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

if TYPE_CHECKING:
    from common.config import Config

ROUND_TRIPS = Counter("dms_redis_round_trips_total",
                      "Requests this process sent to Redis (a pipeline or a script is one)")


class _CountingConnection(redis.Connection):
    """Counts each request written to Redis: what a pipeline saves shows up here."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        ROUND_TRIPS.inc()
        super().send_packed_command(command, check_health)


def make_redis(url: str, *, socket_timeout_s: float | None = 2.0, max_connections: int = 200,
               retries: int | None = None) -> redis.Redis:
    """Replies decoded to str; `socket_timeout_s=None` for blocking pub/sub readers. `retries`
    replaces redis-py's own retry of a failed command (reconnecting inside the call) when set."""
    # Counted connections on plain TCP only: TLS (rediss://) and unix sockets keep their own classes.
    options: dict[str, Any] = {"connection_class": _CountingConnection} if url.startswith("redis://") else {}
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    return redis.Redis.from_url(
        url,
        **options,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        max_connections=max_connections,
    )


def make_cluster(nodes: tuple[str, ...], *, socket_timeout_s: float | None = 2.0,
                 max_connections: int = 200) -> redis.Redis:
    """A Redis Cluster client from `host:port` seeds; it learns the rest of the cluster from them.

    It follows MOVED/ASK replies and refreshes its slot map after a connection error, so a command
    in flight when a primary dies is retried on the promoted replica.
    """
    seeds = [ClusterNode(host, int(port)) for host, _, port in (node.rpartition(":") for node in nodes)]
    client = RedisCluster(
        startup_nodes=seeds,
        connection_class=_CountingConnection,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        max_connections=max_connections,
    )
    return cast(redis.Redis, client)


def redis_for(config: Config, *, socket_timeout_s: float | None = 2.0, max_connections: int = 200) -> redis.Redis:
    """The process's Redis: the cluster when `REDIS_CLUSTER_NODES` is set, else `REDIS_URL`."""
    if config.redis_cluster_nodes:
        return make_cluster(config.redis_cluster_nodes, socket_timeout_s=socket_timeout_s,
                            max_connections=max_connections)
    return make_redis(config.redis_url, socket_timeout_s=socket_timeout_s, max_connections=max_connections)


def is_cluster(client: Any) -> bool:
    """Is `client` (or the pipeline) a Redis Cluster one? A type check, no round trip."""
    return isinstance(client, RedisCluster)


def publish_channel(client: Any, channel: str, message: str) -> None:
    """PUBLISH on one Redis; SPUBLISH on a cluster, so the message stays inside its channel's shard
    (a cluster-wide PUBLISH is copied to every node over the cluster bus). Works on pipelines too."""
    if isinstance(client, RedisCluster):
        client.spublish(channel, message)
    else:
        client.publish(channel, message)


def get_many(client: redis.Redis, keys: list[str]) -> list[Any]:
    """MGET of keys that may live in different slots: one MGET on one Redis; on a cluster one per
    slot (redis-py groups them), since an MGET across slots is refused."""
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(keys))
    return list(client.mget(keys))


# Registered Lua scripts, per client and source: EVALSHA after the first call, EVAL again if Redis
# restarted and forgot the script. Weak keys, so a closed client's scripts go with it.
_SCRIPTS: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = weakref.WeakKeyDictionary()


def registered_script(client: redis.Redis, source: str) -> Any:
    """The `register_script` object of `source` on `client`, made once per client."""
    scripts = _SCRIPTS.setdefault(client, {})
    if source not in scripts:
        scripts[source] = client.register_script(source)
    return scripts[source]
