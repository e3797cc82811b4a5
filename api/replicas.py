"""Read replicas: round-robin reads, read-your-writes, lag and outage checks, retry on the primary.

A read goes to the next replica that answered the last check and was no more than
`max_lag_s` behind, unless the caller wrote within `recent_write_s` (read-your-writes: the
mark lives in Redis, so it holds across API processes) or no replica qualifies; then the
primary serves it. Writes, `/ready` and the relay always use the primary.

Lag is measured in WAL, not in time since the last replayed commit (which grows while the
primary is idle): every check samples the primary's `pg_current_wal_lsn()`, and a replica is
fresh when it has replayed at least what the primary had written `max_lag_s` ago.

A replica that fails during a read (stopped, restarted, query cancelled by recovery) raises
`ReplicaFailed` out of `ReadPool.connection()`; `ReadPool.read()` marks it down and runs the same
read once more on the primary, so a replica outage never fails a request.

Read-your-writes fails closed: when Redis does not answer, reads go to the primary.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import redis
from flask import Flask, current_app, has_request_context, request
from loguru import logger
from prometheus_client import Counter
from psycopg_pool import PoolTimeout

from api import keys
from api.state import request_state
from common.db import Pool

T = TypeVar("T")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
READS = Counter("dms_api_db_reads_total", "Read-pool checkouts by the server that served them", ["target"])


class ReplicaFailed(Exception):
    """A replica broke while serving a read; `ReadPool.read()` runs the read again on the primary."""


@dataclass
class Replica:
    """One replica's pool and what the last check found."""

    name: str
    pool: Pool
    up: bool = False
    lag_ok: bool = False
    replay_lsn: int = 0
    checked_at: float = 0.0

    @property
    def usable(self) -> bool:
        return self.up and self.lag_ok


@dataclass
class ReplicaRouter:
    """Chooses where each read goes; `start()` runs the checks in a background thread (a greenlet
    under gevent)."""

    primary: Pool
    replicas: list[Replica]
    redis: redis.Redis
    max_lag_s: float = 1.0
    check_every_s: float = 0.5
    recent_write_s: float = 5.0
    checkout_timeout_s: float = 1.0
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64), repr=False)
    _turn: Iterator[int] = field(default_factory=lambda: itertools.count(), repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    # -- checks --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.replicas and self._thread is None:
            self._thread = threading.Thread(target=self._check_forever, name="replica-checks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.checkout_timeout_s * 3)
            self._thread = None

    def _check_forever(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.check_every_s)

    def check(self) -> None:
        """Sample the primary's WAL position, then each replica's replay position."""
        now = time.monotonic()
        try:
            with self.primary.connection(timeout=self.checkout_timeout_s) as conn:
                row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS lsn").fetchone()
            if row is not None:
                self._samples.append((now, int(row["lsn"])))
        except (psycopg.Error, PoolTimeout) as exc:
            logger.debug("replica check: primary unavailable: {}", type(exc).__name__)
        target = self._target_lsn(now)
        for replica in self.replicas:
            self._check_replica(replica, target)

    def _target_lsn(self, now: float) -> int | None:
        """What the primary had written `max_lag_s` ago (the oldest sample while there is none that old)."""
        old_enough = [lsn for at, lsn in self._samples if now - at >= self.max_lag_s]
        if old_enough:
            return old_enough[-1]
        return self._samples[0][1] if self._samples else None

    def _check_replica(self, replica: Replica, target: int | None) -> None:
        was = replica.usable
        try:
            with replica.pool.connection(timeout=self.checkout_timeout_s) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery() AS standby,"
                    " pg_wal_lsn_diff(COALESCE(pg_last_wal_replay_lsn(), '0/0'), '0/0') AS lsn"
                ).fetchone()
            assert row is not None
            replica.up = True
            replica.replay_lsn = int(row["lsn"])
            # A server that is not in recovery is not behind anything (a promoted replica, or the
            # primary itself listed as a replica in a small setup).
            replica.lag_ok = not row["standby"] or (target is not None and replica.replay_lsn >= target)
        except (psycopg.Error, PoolTimeout) as exc:
            replica.up = False
            logger.debug("replica {} unavailable: {}", replica.name, type(exc).__name__)
        replica.checked_at = time.monotonic()
        if was != replica.usable:
            logger.info("replica {} {}", replica.name, "in use" if replica.usable
                        else ("lagging" if replica.up else "down"))

    def mark_down(self, replica: Replica) -> None:
        """Skip it until the next check finds it well again."""
        replica.up = False

    # -- routing -------------------------------------------------------------------------------
    def note_write(self, user_id: str) -> None:
        try:
            self.redis.set(keys.recent_write(user_id), "1", px=int(self.recent_write_s * 1000))
        except redis.RedisError as exc:
            logger.warning("read-your-writes mark not stored: {}", type(exc).__name__)

    def _wrote_recently(self, user_id: str) -> bool:
        try:
            return bool(self.redis.exists(keys.recent_write(user_id)))
        except redis.RedisError:
            return True  # fail closed: the primary is always current

    def pick(self, user_id: str | None) -> Replica | None:
        """The replica for this read, or None for the primary."""
        usable = [replica for replica in self.replicas if replica.usable]
        if not usable or (user_id is not None and self._wrote_recently(user_id)):
            return None
        return usable[next(self._turn) % len(usable)]

    def status(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "up": r.up, "lag_ok": r.lag_ok, "replay_lsn": r.replay_lsn} for r in self.replicas]


class ReadPool:
    """Reads routed per read: `read(run)` for a whole read, `connection()` like a psycopg pool."""

    def __init__(self, router: ReplicaRouter) -> None:
        self.router = router

    def read(self, run: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        """`run(conn)` on the connection `connection()` picks; run again on the primary when a
        replica fails under it (nothing was sent to the client yet, and a read has no effects)."""
        try:
            with self.connection() as conn:
                return run(conn)
        except ReplicaFailed as exc:
            logger.warning("read failed on a replica, retrying on the primary: {}", exc)
            READS.labels("primary").inc()
            with self.router.primary.connection() as conn:
                return run(conn)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        replica = self.router.pick(_current_user_id())
        if replica is not None:
            stack = ExitStack()
            try:
                conn = stack.enter_context(replica.pool.connection(timeout=self.router.checkout_timeout_s))
            except (PoolTimeout, psycopg.OperationalError):
                self.router.mark_down(replica)
                replica = None
        if replica is None:
            READS.labels("primary").inc()
            with self.router.primary.connection(timeout=timeout) as conn:
                yield conn
            return
        READS.labels("replica").inc()
        try:
            with stack:  # its exit commits, which can fail too when the replica just went away
                yield conn
        except psycopg.OperationalError as exc:
            # Connection lost, server shutting down, or a query cancelled by WAL replay.
            self.router.mark_down(replica)
            raise ReplicaFailed(f"replica {replica.name}: {type(exc).__name__}") from exc


def _current_user_id() -> str | None:
    if not has_request_context():
        return None
    who = request_state().identity
    return None if who is None else str(who.user_id)


def init_app(app: Flask) -> None:
    """Mark a user's successful writes for read-your-writes."""

    @app.after_request
    def _note_write(response: Any) -> Any:
        if request.method not in WRITE_METHODS:
            return response
        router: ReplicaRouter | None = getattr(current_app.extensions.get("dms"), "router", None)
        who = request_state().identity
        if (router is not None and router.replicas and who is not None and request.method in WRITE_METHODS
                and 200 <= response.status_code < 300):
            router.note_write(str(who.user_id))
        return response
