"""Every Redis key the API's cache and rate limiter use, built in one place.

All of them go through `_key`, so a change of scheme is a change of that one
function. Lua scripts never format a key: they receive the keys, or an entry key's
two halves around the generation the script reads (`entry_key_around`).
"""

from __future__ import annotations

_GAP = "\x00"  # stands for the generation in `entry_key_around`; never part of a real key


# One hash tag for every API key: the rate-limit script reads counters, a cache generation, the
# hit counter and an entry in one call, and on a Redis Cluster one script may only touch one slot.
# So the API's keys live on one shard of a cluster (pub/sub, the bulk of the traffic, spreads over
# all of them). Before the tag the keys were `dms:cache:...` and `dms:rl:...`; after an upgrade the
# old ones are caches, windowed counters and marks that expire by themselves, except the hit/miss
# counters and `dms:cache:gen:*`, which just stay behind (delete `dms:cache:*` and `dms:rl:*` at will).
HASH_TAG = "{api}"


def _key(*parts: str) -> str:
    return f"dms:{HASH_TAG}:" + ":".join(parts)


CACHE_PREFIX = _key("cache", "")  # `dms:cache:`: every cache key starts with it
CACHE_HITS = _key("cache", "hits")
CACHE_MISSES = _key("cache", "misses")


def generation_key(namespace: str) -> str:
    """The counter a write bumps to retire every entry of `namespace` at once."""
    return _key("cache", "gen", namespace)


def entry_key(namespace: str, generation: str, key: str) -> str:
    return _key("cache", namespace, f"g{generation}", key)


def entry_key_around(namespace: str, key: str) -> tuple[str, str]:
    """`entry_key` before and after its generation, for a script that reads the generation itself."""
    head, _, tail = entry_key(namespace, _GAP, key).partition(_GAP)
    return head, tail


def lock_key(namespace: str, generation: str, key: str) -> str:
    """The rebuild lock of one entry."""
    return _key("cache", namespace, f"g{generation}", key, "lock")


def warm_mark(namespace: str) -> str:
    return _key("cache", "warm", namespace)


def rate_counter(subject: str, count: int, period_s: int, window: int) -> str:
    """One subject's counter for one window of one limit (`ip:<address>` or `user:<id>`)."""
    return _key("rl", subject, f"{count}/{period_s}", str(window))


def recent_write(user_id: str) -> str:
    """The read-your-writes mark (api/replicas.py)."""
    return _key("ryw", user_id)


def profile_seen(user_id: str) -> str:
    return _key("profile-seen", user_id)
