"""Cache-aside in Redis for read endpoints, with namespace generations and stampede protection.

Keys are `dms:{api}:cache:<namespace>:g<generation>:<key>`. A write bumps the namespace's generation
(`dms:{api}:cache:gen:<namespace>`) after its transaction commits, so every entry of the old generation,
whatever query built it, stops being read at once and expires on its own.

A hit is one round trip: a script reads the generation and the entry and counts the hit, and the
stored JSON text goes to the client as it is, with an `ETag` (its hash) so a client holding the
same text gets `304 Not Modified` without a body. In `python -m api` a hit is usually no round
trip at all: the process's near cache (api/near_cache.py) keeps the texts it has read until any
process invalidates their namespace.

Fails open: when Redis does not answer, reads go to PostgreSQL (`X-Cache: MISS`), writes still
succeed, a warning is logged and `dms_api_redis_fail_open_total{feature="cache"}` counts it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from flask import Flask, Response, current_app, has_request_context, request
from loguru import logger
from prometheus_client import Counter

from api import keys
from api.context import services
from api.headers import add_ready
from api.near_cache import NearCache, NearEntry, publish_change
from api.state import request_state
from common.redis_client import is_cluster, registered_script

HITS_KEY = keys.CACHE_HITS
MISSES_KEY = keys.CACHE_MISSES
FAIL_OPEN = Counter("dms_api_redis_fail_open_total", "Requests served without Redis because it failed",
                    ["feature"])
# Per process, next to the Redis counters (which every process shares) so Prometheus can rate them.
LOOKUPS = Counter("dms_api_cache_lookups_total", "Cache lookups by result", ["result"])
_LOOKUP_COUNTERS = {"hit": LOOKUPS.labels("hit"), "miss": LOOKUPS.labels("miss")}
for _feature in ("cache", "ratelimit"):
    FAIL_OPEN.labels(_feature)

# Deletes the lock only if it is still ours: a slow rebuild must not release someone else's lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the generation key, the hits counter; ARGV: the entry key before and after its generation
# (api/keys.py). Returns {generation, entry or false}; counts a hit, so a hit costs one round trip.
_LOOKUP = """
local generation = redis.call('GET', KEYS[1]) or '0'
local value = redis.call('GET', ARGV[1] .. generation .. ARGV[2])
if value then redis.call('INCR', KEYS[2]) end
return {generation, value}
"""

# KEYS: the lock, the misses counter; ARGV: our token, the lock's ttl (ms). 1 when we took it.
_LOCK_AND_COUNT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('INCR', KEYS[2])
    return 1
end
return 0
"""

# KEYS: the entry, its lock; ARGV: the value, its ttl (s), our lock token.
_STORE_AND_RELEASE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

_PUT_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' and tonumber(decoded['version'] or 0) >= tonumber(ARGV[2]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Prefetched:
    """A cache entry the rate limiter's script read in its round trip (api/ratelimit.py)."""

    namespace: str
    key: str
    generation: str
    raw: str | None
    epoch: tuple[int, int]  # the near cache's, read before the round trip


# How a view names its cache entry (namespace, key) from the request alone, before it runs.
Prefetcher = Callable[[], tuple[str, str] | None]
PREFETCHERS = "dms.prefetchers"  # app.extensions[PREFETCHERS]: endpoint -> its Prefetcher


def register_prefetchers(app: Flask, prefetchers: Mapping[str, Prefetcher]) -> None:
    """Let the rate limiter read these views' cache entries in its own round trip (api/ratelimit.py)."""
    app.extensions.setdefault(PREFETCHERS, {}).update(prefetchers)


def prefetch_key(prefetchers: Mapping[str, Prefetcher]) -> tuple[str, str] | None:
    """The current request's cache entry, when its view has one and the request names it validly."""
    compute = prefetchers.get(request.endpoint or "")
    if compute is None or request.method != "GET":
        return None
    try:
        return compute()
    except Exception:  # an invalid request: its view will answer with the error
        return None


def _prefetched(namespace: str, key: str) -> Prefetched | None:
    if not has_request_context():
        return None
    state = request_state()
    found, state.prefetched = state.prefetched, None  # read once: a second lookup goes to Redis
    if found is None or found.namespace != namespace or found.key != key:
        return None
    return found


@dataclass
class Cached:
    """A cache answer: the JSON text as stored (decoded only when someone asks for `value`)."""

    raw: str
    hit: bool
    known_etag: str | None = None
    known_body: bytes = b""

    @cached_property
    def value(self) -> Any:
        return json.loads(self.raw)

    @property
    def header(self) -> dict[str, str]:
        return {"X-Cache": "HIT" if self.hit else "MISS"}

    @property
    def etag(self) -> str:
        return self.known_etag or etag_of(self.raw)

    def response(self, *, cache_control: str) -> Response:
        """The stored text as the body, `ETag` and `Cache-Control` set; 304 when If-None-Match matches."""
        quoted = f'"{self.etag}"'
        environ = request.environ
        # Added as they are by api/headers.py: werkzeug would check each value again, and that
        # cost a tenth of a cached read.
        add_ready(environ, [("X-Cache", "HIT" if self.hit else "MISS"), ("Cache-Control", cache_control),
                            ("ETag", quoted)])
        if names_etag(environ.get("HTTP_IF_NONE_MATCH"), quoted):
            return current_app.response_class(status=304)
        return current_app.response_class(self.body, mimetype="application/json")

    @property
    def body(self) -> bytes:
        return self.known_body or (self.raw + "\n").encode()


def names_etag(if_none_match: str | None, quoted: str) -> bool:
    """Whether an If-None-Match header names this entity tag (weak comparison, RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == quoted for tag in map(str.strip, if_none_match.split(",")))


def etag_of(raw: str) -> str:
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def text_of(reply: Any) -> str:
    """A script's reply as text (bytes from a client without decode_responses, else str or int)."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def query_key(**parts: Any) -> str:
    """A short, stable key for a query's parameters."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cache() -> Cache:
    """The cache of the current app's Redis client and near cache."""
    svc = services()
    return Cache(svc.redis, near=svc.near_cache)


class Cache:
    """Cache-aside over one Redis client; values are JSON."""

    def __init__(self, client: redis.Redis, *, near: NearCache | None = None, lock_ttl_ms: int = 3000,
                 wait_for_rebuild_s: float = 1.0, poll_interval_s: float = 0.05, jitter: float = 0.1) -> None:
        self.redis = client
        self.near = near
        self.lock_ttl_ms = lock_ttl_ms
        self.wait_for_rebuild_s = wait_for_rebuild_s
        self.poll_interval_s = poll_interval_s
        self.jitter = jitter

    def get_or_load(self, namespace: str, key: str, load: Callable[[], Any], *, ttl_s: int) -> Cached:
        """The cached value, or `load()` stored for `ttl_s` (± jitter so entries do not expire together).

        On a miss one caller takes a short lock and rebuilds; the others poll for its value for up
        to `wait_for_rebuild_s`, then read PostgreSQL themselves rather than wait longer.
        """
        near = self.near.get(namespace, key) if self.near is not None else None
        if near is not None:
            _LOOKUP_COUNTERS["hit"].inc()
            return Cached(near.raw, hit=True, known_etag=near.etag, known_body=near.body)
        try:
            generation, raw, epoch = self._lookup(namespace, key)
        except redis.RedisError as exc:
            return self._fail_open(exc, load)
        if raw is not None:
            _LOOKUP_COUNTERS["hit"].inc()
            return self._keep_near(namespace, key, Cached(raw, hit=True), epoch)
        token = uuid.uuid4().hex
        full_key = keys.entry_key(namespace, generation, key)
        lock_key = keys.lock_key(namespace, generation, key)
        try:
            # The miss is counted in the same round trip as the lock is taken.
            locked = bool(self._script(_LOCK_AND_COUNT)(keys=[lock_key, MISSES_KEY], args=[token, self.lock_ttl_ms]))
        except redis.RedisError as exc:
            return self._fail_open(exc, load)
        if locked:
            _LOOKUP_COUNTERS["miss"].inc()
            try:
                text = self._encode(load())
            except BaseException:
                self._release(lock_key, token)
                raise
            self._store_and_release(full_key, text, ttl_s, lock_key, token)
            return self._keep_near(namespace, key, Cached(text, hit=False), epoch)
        waited = self._wait_for(full_key)
        self._count(HITS_KEY if waited is not None else MISSES_KEY)
        if waited is not None:
            return Cached(waited, hit=True)
        return Cached(self._encode(load()), hit=False)

    def put_newer(self, namespace: str, key: str, value: dict[str, Any], *, version: int, ttl_s: int) -> None:
        """Store `value` unless the entry already holds this `version` or a later one.

        Readers and writers both fill through here, so a reader holding an older row, or the
        slower of two racing writers, can never replace a newer entry.
        """
        try:
            self.redis.eval(_PUT_NEWER, 1, self._key(namespace, key), self._encode(value), version,
                            self._ttl(ttl_s))
        except redis.RedisError as exc:
            self._warn(exc)
            self.delete(namespace, key)

    def get(self, namespace: str, key: str) -> Any | None:
        try:
            _, raw, _ = self._lookup(namespace, key)
        except redis.RedisError as exc:
            self._warn(exc)
            return None
        if raw is None:
            self._count(MISSES_KEY)
            return None
        _LOOKUP_COUNTERS["hit"].inc()
        return json.loads(raw)

    def delete(self, namespace: str, key: str) -> None:
        try:
            self.redis.delete(self._key(namespace, key))
        except redis.RedisError as exc:
            self._warn(exc)

    def invalidate(self, namespace: str) -> None:
        """Make every entry of `namespace` unreachable at once by moving to a new generation.

        This process's near copies go at once; the other processes' when the change message reaches
        them (sent in the same round trip as the generation moves).
        """
        if self.near is not None:
            self.near.invalidate(namespace)
        try:
            if is_cluster(self.redis):
                # A cluster pipeline refuses PUBLISH (it has no key to route by): two round trips.
                self.redis.incr(keys.generation_key(namespace))
                publish_change(self.redis, namespace)
                return
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(keys.generation_key(namespace))
                publish_change(pipe, namespace)
                pipe.execute()
        except redis.RedisError as exc:
            self._warn(exc)

    def _keep_near(self, namespace: str, key: str, found: Cached, epoch: tuple[int, int]) -> Cached:
        """Keep a copy in this process unless an invalidation arrived while we were reading."""
        if self.near is not None:
            found.known_etag, found.known_body = etag_of(found.raw), found.body
            self.near.put(namespace, key, NearEntry(found.raw, found.known_etag, found.known_body), epoch=epoch)
        return found

    def _script(self, source: str) -> Any:
        return registered_script(self.redis, source)

    def _store_and_release(self, full_key: str, text: str, ttl_s: int, lock_key: str, token: str) -> None:
        try:
            self._script(_STORE_AND_RELEASE)(keys=[full_key, lock_key], args=[text, self._ttl(ttl_s), token])
        except redis.RedisError as exc:
            self._warn(exc)

    def _lookup(self, namespace: str, key: str) -> tuple[str, str | None, tuple[int, int]]:
        """(generation, stored text or None, the near cache's epoch before the read) in one round trip;
        a hit is counted there too.

        No round trip at all when the rate limiter's script already read this entry.
        """
        early = _prefetched(namespace, key)
        if early is not None:
            return early.generation, early.raw, early.epoch
        epoch = self.near.epoch(namespace) if self.near is not None else (0, 0)
        generation, raw = self._script(_LOOKUP)(keys=[keys.generation_key(namespace), HITS_KEY],
                                                args=list(keys.entry_key_around(namespace, key)))
        if isinstance(raw, bytes):
            raw = raw.decode()
        return text_of(generation), raw, epoch

    def _key(self, namespace: str, key: str) -> str:
        generation = int(self.redis.get(keys.generation_key(namespace)) or 0)
        return keys.entry_key(namespace, str(generation), key)

    def _ttl(self, ttl_s: int) -> int:
        return max(1, round(ttl_s * random.uniform(1 - self.jitter, 1 + self.jitter)))

    @staticmethod
    def _encode(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), default=str)

    def _release(self, lock_key: str, token: str) -> None:
        try:
            self.redis.eval(_RELEASE, 1, lock_key, token)
        except redis.RedisError as exc:
            self._warn(exc)

    def _wait_for(self, full_key: str) -> str | None:
        deadline = time.monotonic() + self.wait_for_rebuild_s
        while time.monotonic() < deadline:
            time.sleep(self.poll_interval_s)
            try:
                raw = self.redis.get(full_key)
            except redis.RedisError as exc:
                self._warn(exc)
                return None
            if raw is not None:
                return raw.decode() if isinstance(raw, bytes) else str(raw)
        return None

    def _count(self, key: str) -> None:
        _LOOKUP_COUNTERS["hit" if key == HITS_KEY else "miss"].inc()
        try:
            self.redis.incr(key)
        except redis.RedisError as exc:
            self._warn(exc)

    def _fail_open(self, exc: Exception, load: Callable[[], Any]) -> Cached:
        self._warn(exc)
        return Cached(self._encode(load()), hit=False)

    @staticmethod
    def _warn(exc: Exception) -> None:
        FAIL_OPEN.labels("cache").inc()
        logger.warning("cache unavailable, reading PostgreSQL: {}", type(exc).__name__)
