"""REST rate limits in Redis: fixed windows per client IP and per user, shared by every API process.

Each window is one Redis counter, `dms:{api}:rl:<scope>:<who>:<limit>/<period>:<window number>`. One Lua
script raises every counter of the request (IP and user) and gives a new counter its expiry, so
a request costs at most one round trip and a crash between INCR and EXPIRE cannot leave a counter
that never expires. A process raises a counter by a small lease (a fiftieth of the limit, at
most 1,000) and spends it locally, so a busy client costs a round trip only every few requests;
the shared count is never passed, and a client spread over several processes may be refused a
few requests early, never late. Every limited response carries `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the tighter window resets); a
refused one is 429 `rate_limited` with `Retry-After`.

Fails open: when Redis does not answer, requests pass unlimited, a warning is logged and
`dms_api_redis_fail_open_total{feature="ratelimit"}` counts it. Refusing every request because
the limiter's store is down would turn a Redis outage into a full API outage.

`/health`, `/ready` and `/metrics` are never limited: probes and scrapers must always get through.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, request
from loguru import logger

from api import keys
from api.cache import FAIL_OPEN, PREFETCHERS, Prefetched, prefetch_key, text_of
from api.context import services
from api.headers import RATE_WINDOW_KEY
from api.rate_leases import Lease, Leases, lease_size
from api.state import request_state
from common.auth import Identity, TokenVerifier, bearer_token
from common.config import Config, RateLimit
from common.errors import RateLimited, Unauthorized
from common.redis_client import registered_script

UNLIMITED_PATHS = ("/health", "/ready", "/metrics")

# KEYS: n counters, then (optionally) a cache generation key and the hits counter.
# ARGV: n, n expiries (s), n limits, n lease sizes, then (optionally) the cache entry's key before and
# after its generation (api/keys.py).
# Returns the n counts, then (when asked and no limit is exceeded) {generation, entry or false}.
_HIT = """
local n = tonumber(ARGV[1])
local out = {}
local over = false
for i = 1, n do
    local want = tonumber(ARGV[1 + 2 * n + i])
    local count = redis.call('INCRBY', KEYS[i], want)
    if count == want then redis.call('EXPIRE', KEYS[i], ARGV[1 + i]) end
    out[i] = count
    if count - want >= tonumber(ARGV[1 + n + i]) then over = true end
end
if #KEYS > n and not over then
    local generation = redis.call('GET', KEYS[n + 1]) or '0'
    local value = redis.call('GET', ARGV[2 + 3 * n] .. generation .. ARGV[3 + 3 * n])
    if value then redis.call('INCR', KEYS[n + 2]) end
    out[n + 1] = generation
    out[n + 2] = value
end
return out
"""


@dataclass(frozen=True)
class Window:
    """Where one counter stands after this request."""

    limit: int
    count: int
    reset_s: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("X-RateLimit-Limit", str(self.limit)), ("X-RateLimit-Remaining", str(self.remaining)),
                ("X-RateLimit-Reset", str(self.reset_s))]


@functools.lru_cache(maxsize=4096)
def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted: tuple[str, ...]) -> str:
    """The peer, unless it is a trusted proxy: then the right-most untrusted `X-Forwarded-For` entry.

    Reading from the right means a client cannot pick its own address by sending a forged header:
    only hops our proxies appended are believed. Remembered: a client sends the same pair for as
    long as it is connected, and parsing addresses is most of a cached read's limiter work.
    """
    peer = remote_addr or "unknown"
    if not _is_trusted(peer, trusted) or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            if entry == address:
                return True
    return False


def _verified(environ: dict[str, Any], tokens: TokenVerifier) -> Identity | None:
    """The token's identity when the token is valid; the route itself answers 401 otherwise."""
    token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
    if not token:
        return None
    try:
        return tokens.verify(token)
    except Unauthorized:
        return None


def hit(client: redis.Redis, leases: Leases, counters: list[tuple[str, RateLimit]], *, now_s: float,
        lookup: Callable[[], tuple[str, str] | None] = lambda: None,
        epoch: Callable[[str], tuple[int, int]] = lambda _: (0, 0)) -> tuple[list[Window], Prefetched | None]:
    """Count one request against every (subject, limit) pair: from this process's leases, or, for
    the counters whose lease is spent, with one script call that takes a new lease of each.

    A lease is `lease_size(limit)` requests (1 for limits under 2 * LEASE_SHARE), so the shared
    count is never passed; a client spread over P processes may be refused up to
    (P - 1) * (lease - 1) requests early, never late. When a script call is needed and `lookup()`
    names a cache entry (namespace, key), the same call reads it, unless a limit is exceeded;
    `epoch(namespace)` is the near cache's, read before the call.
    """
    windows: list[Window] = []
    remote: list[tuple[int, str, RateLimit, int]] = []  # (position, counter key, limit, reset)
    for subject, limit in counters:
        window = int(now_s // limit.period_s)
        key = keys.rate_counter(subject, limit.count, limit.period_s, window)
        reset_s = max(1, math.ceil((window + 1) * limit.period_s - now_s))
        lease = leases.get(key)
        if lease is not None and lease.tokens > 0:
            lease.tokens -= 1
            windows.append(Window(limit.count, lease.through - lease.tokens, reset_s))
        else:
            windows.append(Window(limit.count, 0, reset_s))  # filled in below
            remote.append((len(windows) - 1, key, limit, reset_s))
    if not remote:
        return windows, None
    wanted = lookup()
    read_at = epoch(wanted[0]) if wanted is not None else (0, 0)
    wants = [lease_size(limit) for _, _, limit, _ in remote]
    script_keys = [key for _, key, _, _ in remote]
    args: list[Any] = [len(remote), *(limit.period_s + 1 for _, _, limit, _ in remote),
                       *(limit.count for _, _, limit, _ in remote), *wants]
    if wanted is not None:
        script_keys += [keys.generation_key(wanted[0]), keys.CACHE_HITS]
        args += keys.entry_key_around(*wanted)
    out = registered_script(client, _HIT)(keys=script_keys, args=args)
    for n, (position, key, limit, reset_s) in enumerate(remote):
        before = int(out[n]) - wants[n]
        granted = max(0, min(wants[n], limit.count - before))
        if granted > 1:
            leases.put(key, Lease(tokens=granted - 1, through=before + granted), ttl_s=reset_s)
        windows[position] = Window(limit.count, before + 1, reset_s)
    prefetched = None
    if wanted is not None and len(out) > len(remote):
        generation, raw = out[len(remote)], out[len(remote) + 1]
        prefetched = Prefetched(wanted[0], wanted[1], text_of(generation), raw if raw else None, read_at)
    return windows, prefetched


def init_app(app: Flask, config: Config) -> None:
    """Count every `/api` request before its view runs; headers go on every limited response."""
    prefetchers = app.extensions.setdefault(PREFETCHERS, {})  # filled by create_app (api/cache.py)

    @app.before_request
    def _limit() -> None:
        environ = request.environ  # read directly: each `request.` attribute is a context lookup
        path = environ.get("PATH_INFO", "")
        if path in UNLIMITED_PATHS or not path.startswith("/api"):
            return
        ip = client_ip(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"), config.trusted_proxies)
        counters = [(f"ip:{ip}", config.rate_limit_ip)]
        svc = services()
        state = request_state()
        state.verified = verified = _verified(environ, svc.tokens)  # the route's authenticate() reuses it
        if verified is not None:
            counters.append((f"user:{verified.user_id}", config.rate_limit_user))

        def lookup() -> tuple[str, str] | None:
            """The view's cache entry, read in the limiter's round trip unless this process holds it."""
            wanted = prefetch_key(prefetchers)
            return None if wanted is None or svc.near_cache.peek(*wanted) else wanted

        try:
            windows, state.prefetched = hit(svc.redis, svc.rate_leases, counters, now_s=time.time(), lookup=lookup,
                                            epoch=svc.near_cache.epoch)
        except redis.RedisError as exc:
            FAIL_OPEN.labels("ratelimit").inc()
            logger.warning("rate limiter unavailable, letting the request through: {}", type(exc).__name__)
            return
        # The tightest window speaks for the request: the fewest left, then the longest wait.
        # api/headers.py writes it into the response, whichever way the request ends.
        environ[RATE_WINDOW_KEY] = min(windows, key=lambda w: (w.remaining, -w.reset_s))
        exceeded = [w for w in windows if w.count > w.limit]
        if exceeded:
            environ[RATE_WINDOW_KEY] = worst = max(exceeded, key=lambda w: w.reset_s)
            raise RateLimited(f"more than {worst.limit} requests; retry in {worst.reset_s} s",
                              retry_after_s=worst.reset_s, details={"limit": worst.limit,
                                                                    "reset_s": worst.reset_s})

