"""Housekeeping for tables that only grow: batched sweeps and GPS day partitions (relay leader)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from loguru import logger
from psycopg import sql

from common.config import Retention

T = TypeVar("T")
BATCH_ROWS = 5000
# Per table and run: the relay leader publishes nothing while housekeeping runs, so one run stays
# short and a large backlog is worked off over the following runs (one a minute).
MAX_BATCHES = 20
# The API's sampler keeps 8 days (api/performance.py) so that its 7-day range is complete; this
# sweep is the backstop for sources that stopped sampling (and so stopped deleting).
PERFORMANCE_RETENTION = timedelta(days=8)
PARTITION_DAYS_AHEAD = 7
# DDL on driver_locations waits at most this long for a lock, so GPS writes never queue behind it;
# what did not get its lock is done at the next run.
DDL_LOCK_TIMEOUT = "2s"


@dataclass
class Report:
    """What one run did, for the log line and the tests."""

    idempotency_keys: int = 0
    performance_samples: int = 0
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps that met a lock timeout


def sweep(conn: psycopg.Connection[Any], table: str, column: str, older_than: timedelta, *,
          batch: int = BATCH_ROWS, max_batches: int = MAX_BATCHES) -> int:
    """Delete rows whose `column` is older than `older_than`, `batch` rows per transaction.

    Small transactions hold few row locks, keep WAL bursts small and let autovacuum follow;
    `column` must be indexed so each batch finds its rows without a full scan.
    """
    statement = sql.SQL(
        "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {column} < now() - %s"
        " LIMIT %s))"
    ).format(table=sql.Identifier(table), column=sql.Identifier(column))
    deleted = 0
    for _ in range(max_batches):
        with conn.transaction():
            count = conn.execute(statement, (older_than, batch)).rowcount
        deleted += count
        if count < batch:
            break
    return deleted


def location_partitions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """driver_locations' partitions, oldest first: name, low_bound, high_bound, detach_pending."""
    return conn.execute(
        "SELECT name, low_bound, high_bound, detach_pending FROM driver_locations_partitions()"
    ).fetchall()


def create_location_partitions(conn: psycopg.Connection[Any], *, days_ahead: int = PARTITION_DAYS_AHEAD
                               ) -> list[str]:
    """Make sure yesterday (late points), today and `days_ahead` further UTC days have a partition."""
    created: list[str] = []
    for offset in range(-1, days_ahead + 1):
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (DDL_LOCK_TIMEOUT,))
            row = conn.execute(
                "SELECT dms_create_location_partition((now() AT TIME ZONE 'UTC')::date + %s) AS name", (offset,)
            ).fetchone()
        if row and row["name"]:
            created.append(row["name"])
    return created


def drop_location_partitions(conn: psycopg.Connection[Any], *, retention_days: int) -> list[str]:
    """Drop whole partitions whose every point is older than `retention_days`.

    DETACH ... CONCURRENTLY takes only SHARE UPDATE EXCLUSIVE on driver_locations, so GPS writes
    and reads go on; it cannot run inside a transaction block, hence the autocommit connection.
    A detach interrupted half-way (lock timeout, lost connection) is finished at the next run.
    """
    if not conn.autocommit:
        raise ValueError("drop_location_partitions needs an autocommit connection (DETACH CONCURRENTLY)")
    doomed = conn.execute(
        "SELECT name, detach_pending FROM driver_locations_partitions()"
        " WHERE detach_pending OR high_bound <= now() - make_interval(days => %s)",
        (retention_days,),
    ).fetchall()
    dropped: list[str] = []
    for row in doomed:
        table = sql.Identifier(row["name"])
        mode = sql.SQL("FINALIZE" if row["detach_pending"] else "CONCURRENTLY")
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (DDL_LOCK_TIMEOUT,))
        try:
            conn.execute(sql.SQL("ALTER TABLE driver_locations DETACH PARTITION {} {}").format(table, mode))
        finally:
            conn.execute("RESET lock_timeout")
        # Detached, the table is no longer reachable through driver_locations: nothing waits on it.
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
        dropped.append(row["name"])
    return dropped


def run(conn: psycopg.Connection[Any], retention: Retention) -> Report:
    """Every step once; a step that met a lock timeout is skipped until the next run.

    `conn` is the relay leader's autocommit session (the table owner, as partitions need); the
    retention comes from the relay's `Config`.
    """
    report = Report()

    def guarded(name: str, step: Callable[[], T], default: T) -> T:
        try:
            return step()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            logger.bind(step=name).warning("housekeeping step {} skipped until the next run: {}", name, exc)
            report.skipped.append(name)
            return default

    report.idempotency_keys = guarded("idempotency_keys", lambda: sweep(
        conn, "idempotency_keys", "created_at", timedelta(hours=retention.idempotency_hours)), 0)
    report.performance_samples = guarded("performance_samples", lambda: sweep(
        conn, "performance_samples", "at", PERFORMANCE_RETENTION), 0)
    report.partitions_created = guarded("create_partitions", lambda: create_location_partitions(conn), [])
    report.partitions_dropped = guarded("drop_partitions", lambda: drop_location_partitions(
        conn, retention_days=retention.location_days), [])
    if report.idempotency_keys or report.performance_samples or report.partitions_created \
            or report.partitions_dropped:
        logger.bind(**vars(report)).info("housekeeping: {}", report)
    return report
