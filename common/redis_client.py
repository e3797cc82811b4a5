"""Redis clients: one pool per process, short timeouts so a dead Redis fails fast."""

from __future__ import annotations

import redis


def make_redis(url: str, *, socket_timeout_s: float | None = 2.0, max_connections: int = 200) -> redis.Redis:
    """Replies decoded to str; `socket_timeout_s=None` for blocking pub/sub readers."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        max_connections=max_connections,
    )
