"""Driver GPS: durable, batched writes of location points, acknowledged after commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import psycopg
from gevent.event import Event as GEvent
from loguru import logger
from psycopg_pool import ConnectionPool

from common.db import SERVICE, claims
from common.gps import GpsPoint
from common.locations import store_points

MAX_PENDING_POINTS = 50_000


@dataclass(frozen=True)
class Point:
    """One driver's checked point (common.gps), waiting for its batch."""

    driver_id: str
    gps: GpsPoint


class LocationWriter:
    """Collects points and writes them every `flush_interval_s` or `batch_size` points."""

    def __init__(self, pool: ConnectionPool[Any], *, flush_interval_s: float = 0.2, batch_size: int = 500) -> None:
        self.pool = pool
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._pending: list[tuple[Point, Callable[[bool], None]]] = []
        self._wake = GEvent()
        self._running = False
        self._loop: gevent.Greenlet | None = None
        self.written_total = 0

    def start(self) -> None:
        self._running = True
        self._loop = gevent.spawn(self._flush_forever)

    def accept(self, point: Point, done: Callable[[bool], None]) -> bool:
        """Queue a point; `done(True)` runs once it is committed. False when the buffer is full."""
        if len(self._pending) >= MAX_PENDING_POINTS:
            return False
        self._pending.append((point, done))
        if len(self._pending) >= self.batch_size:
            self._wake.set()
        return True

    def stop(self) -> None:
        """Write everything accepted so far, then stop (graceful shutdown loses nothing)."""
        self._running = False
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout=30)
        while self._pending:
            if not self.flush():
                break

    def _flush_forever(self) -> None:
        while self._running:
            self._wake.wait(timeout=self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        if not self._pending:
            return True
        batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
        try:
            self._write([point for point, _ in batch])
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            # One bad point must not block everyone's batch forever: write them one by one.
            logger.warning("location batch refused ({}); writing points one by one", type(exc).__name__)
            for point, done in batch:
                self._write_one(point, done)
            return True
        except (psycopg.Error, OSError) as exc:
            logger.warning("location write failed, will retry: {}", exc)
            self._pending = batch + self._pending
            return False
        self.written_total += len(batch)
        for _, done in batch:
            done(True)
        return True

    def _write_one(self, point: Point, done: Callable[[bool], None]) -> None:
        try:
            self._write([point])
        except (psycopg.IntegrityError, psycopg.DataError):
            done(False)
            return
        self.written_total += 1
        done(True)

    def _write(self, points: list[Point]) -> None:
        with claims(SERVICE), self.pool.connection() as conn:
            store_points(conn, [p.gps.row(p.driver_id) for p in points])
