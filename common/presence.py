"""Driver presence (contract section 6): `online` only while connected or recently seen, else `stale`.

Every process that hears from a driver (a gateway at connect, on each location and periodically
while the app stays connected; the API on a REST location or status) writes the time into one
Redis sorted set shared by all processes, so presence holds across gateways. A driver whose last
sighting is older than `DRIVER_STALE_SECONDS` is `stale`; `offline` and `on_break` stay what the
driver said.

Who announces a driver going stale on the `drivers` channel: one gateway per period, chosen by a
lease in Redis. The channel only reaches clients through gateways, so a sweep run by the gateways
runs exactly when someone can hear it; the API computes the same rule on every read, so
`GET /api/drivers` is right even with no gateway up. Coming back (a sighting of a driver announced
stale) is announced by whoever saw it, in the same atomic step that records the sighting.

Transitions are ephemeral frames (`id` null): the status is derived, not stored, and a page that
reconnects reads the fleet again with `GET /api/drivers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
import redis
from loguru import logger

from common.clock import iso
from common.db import SERVICE, claims
from common.events import ALL_DRIVERS, DRIVER_STATUS_CHANGED, driver_channel, ephemeral_frame, publish_ephemeral
from common.redis_client import registered_script

# One hash tag: both keys live in one Redis Cluster slot, so the scripts below may touch both.
SEEN_KEY = "dms:presence:{drivers}:seen"  # zset driver id -> unix time last seen
STALE_KEY = "dms:presence:{drivers}:stale"  # set of drivers already announced stale
SWEEP_LEASE_PREFIX = "dms:presence:sweep:"
ONLINE, STALE = "online", "stale"

# Record sightings; answer the ids that had been announced stale (they are back).
_SEEN = """
local back = {}
for i, id in ipairs(ARGV) do
  if i > 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    if redis.call('SREM', KEYS[2], id) == 1 then table.insert(back, id) end
  end
end
return back
"""

# Mark as stale those still unseen since the cutoff and not yet marked; answer them.
_MARK_STALE = """
local marked = {}
for i, id in ipairs(ARGV) do
  if i > 1 then
    local seen = redis.call('ZSCORE', KEYS[1], id)
    if seen and tonumber(seen) < tonumber(ARGV[1]) and redis.call('SADD', KEYS[2], id) == 1 then
      table.insert(marked, id)
    end
  end
end
return marked
"""


def effective_status(reported: str, last_seen: float | None, now: float, stale_s: float) -> str:
    """The rule: what the driver said, unless it says `online` and nothing was heard for `stale_s`."""
    if reported != ONLINE:
        return reported
    return ONLINE if last_seen is not None and now - last_seen <= stale_s else STALE


def last_seen(client: redis.Redis, driver_ids: list[str]) -> dict[str, float]:
    """Unix times of the drivers' last sightings (ZMSCORE: one round trip for a page)."""
    if not driver_ids:
        return {}
    scores = client.zmscore(SEEN_KEY, driver_ids)
    return {d: float(s) for d, s in zip(driver_ids, scores, strict=True) if s is not None}


def seen(client: redis.Redis, driver_ids: Iterable[str], *, now: float | None = None) -> None:
    """Record a sighting; announce `online` for drivers that had been announced stale."""
    ids = list(driver_ids)
    if not ids:
        return
    at = time.time() if now is None else now
    back = registered_script(client, _SEEN)(keys=[SEEN_KEY, STALE_KEY], args=[repr(at), *ids])
    for raw in back or ():
        _announce(client, raw.decode() if isinstance(raw, bytes) else str(raw), ONLINE, STALE, at)


def seen_quietly(client: redis.Redis, driver_ids: Iterable[str]) -> None:
    """`seen` for hot paths: presence is advisory, so a Redis failure costs a log line, not the request."""
    try:
        seen(client, driver_ids)
    except redis.RedisError as exc:
        logger.debug("driver presence not recorded: {}", exc)


def sweep(client: redis.Redis, pool: psycopg_pool.ConnectionPool[Any], stale_s: float,
          *, now: float | None = None) -> list[str]:
    """Announce `stale` for drivers unseen for `stale_s` who still say `online`; answer them."""
    at = time.time() if now is None else now
    cutoff = at - stale_s
    candidates = [c.decode() if isinstance(c, bytes) else str(c)
                  for c in client.zrangebyscore(SEEN_KEY, "-inf", f"({cutoff!r}")]
    if not candidates:
        return []
    flags = client.smismember(STALE_KEY, candidates)
    fresh = [c for c, flagged in zip(candidates, flags, strict=True) if not flagged]
    if not fresh:
        return []
    with claims(SERVICE), pool.connection() as conn:
        rows = conn.execute("SELECT id::text AS id FROM drivers WHERE id = ANY(%s::uuid[]) AND status = 'online'",
                            (fresh,)).fetchall()
    saying_online = [row["id"] for row in rows]
    if not saying_online:
        return []
    marked = [m.decode() if isinstance(m, bytes) else str(m)
              for m in registered_script(client, _MARK_STALE)(keys=[SEEN_KEY, STALE_KEY],
                                                               args=[repr(cutoff), *saying_online]) or ()]
    scores = last_seen(client, marked)
    for driver_id in marked:
        _announce(client, driver_id, STALE, ONLINE, scores.get(driver_id, cutoff))
    return marked


def _announce(client: redis.Redis, driver_id: str, status: str, previous: str, seen_at: float) -> None:
    now = datetime.now(UTC)
    data = {"driver_id": driver_id, "status": status, "previous_status": previous,
            "last_seen_at": iso(datetime.fromtimestamp(seen_at, UTC)), "updated_at": iso(now)}
    with client.pipeline(transaction=False) as pipe:
        for channel in (driver_channel(driver_id), ALL_DRIVERS):
            publish_ephemeral(pipe, channel, ephemeral_frame(channel, DRIVER_STATUS_CHANGED, data, iso(now)))
        pipe.execute()


class GatewayPresence:
    """A gateway's part: sightings at connect, location and disconnect, a heartbeat for the drivers
    it holds, and (when it wins the period's lease) the sweep that announces stale drivers."""

    def __init__(self, client: redis.Redis, pool: psycopg_pool.ConnectionPool[Any], *,
                 stale_s: float = 120.0, instance_id: str = "") -> None:
        self.client = client
        self.pool = pool
        self.stale_s = stale_s
        self.instance_id = instance_id
        # Four heartbeats per window: a connected driver never goes stale between two of them.
        self.every_s = max(0.2, min(30.0, stale_s / 4))
        self._recorded: dict[str, float] = {}  # driver -> monotonic time of its last write here

    def connected(self, driver_id: str) -> None:
        self._recorded[driver_id] = time.monotonic()
        seen_quietly(self.client, [driver_id])

    def located(self, driver_id: str) -> None:
        """At most one write per driver and half-heartbeat: GPS may arrive many times a second."""
        now = time.monotonic()
        if now - self._recorded.get(driver_id, -1e9) >= self.every_s / 2:
            self._recorded[driver_id] = now
            seen_quietly(self.client, [driver_id])

    def disconnected(self, driver_id: str) -> None:
        """The last sighting is the disconnect: the driver goes stale `stale_s` after it."""
        self._recorded.pop(driver_id, None)
        seen_quietly(self.client, [driver_id])

    def run(self, should_run: Callable[[], bool], connected_drivers: Callable[[], Iterable[str]]) -> None:
        """Heartbeat and sweep every `every_s` until `should_run()` is false (a gevent greenlet)."""
        import gevent  # the API imports this module too and does not run on gevent

        while should_run():
            try:
                self.tick(connected_drivers())
            except (redis.RedisError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                logger.warning("driver presence tick failed: {}", exc)
            gevent.sleep(self.every_s)

    def tick(self, connected: Iterable[str]) -> list[str]:
        seen(self.client, set(connected))
        period = int(time.time() // self.every_s)
        if self.client.set(f"{SWEEP_LEASE_PREFIX}{period}", self.instance_id or "1", nx=True,
                           px=max(1000, int(self.every_s * 2000))):
            return sweep(self.client, self.pool, self.stale_s)
        return []
