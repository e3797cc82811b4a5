"""Redis clients: one pool per process, short timeouts so a dead Redis fails fast."""

from __future__ import annotations

import weakref
from typing import Any

import redis
from prometheus_client import Counter

ROUND_TRIPS = Counter("dms_redis_round_trips_total",
                      "Requests this process sent to Redis (a pipeline or a script is one)")


class _CountingConnection(redis.Connection):
    """Counts each request written to Redis: what a pipeline saves shows up here."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        ROUND_TRIPS.inc()
        super().send_packed_command(command, check_health)


def make_redis(url: str, *, socket_timeout_s: float | None = 2.0, max_connections: int = 200) -> redis.Redis:
    """Replies decoded to str; `socket_timeout_s=None` for blocking pub/sub readers."""
    counting: dict[str, Any] = {"connection_class": _CountingConnection} if url.startswith("redis://") else {}
    return redis.Redis.from_url(
        url,
        **counting,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        max_connections=max_connections,
    )


# Registered Lua scripts, per client and source: EVALSHA after the first call, EVAL again if Redis
# restarted and forgot the script. Weak keys, so a closed client's scripts go with it.
_SCRIPTS: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = weakref.WeakKeyDictionary()


def registered_script(client: redis.Redis, source: str) -> Any:
    """The `register_script` object of `source` on `client`, made once per client."""
    scripts = _SCRIPTS.setdefault(client, {})
    if source not in scripts:
        scripts[source] = client.register_script(source)
    return scripts[source]
