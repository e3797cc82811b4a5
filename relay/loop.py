"""The relay loop: PostgreSQL outbox -> Redis, in event-id order, exactly one active across processes.

NOTIFY is only a wake-up; the outbox table is the truth. Event ids are drawn at commit
(sql/0008_commit_order_ids.sql): a deferred trigger numbers a transaction's rows as the last step
before its commit, so an open transaction holds back nobody but itself (its rows have no id yet).

Two committing transactions may still become visible in the other order than they drew their ids,
for a commit instant. Every numberer holds a shared advisory lock from just before it draws until
its transaction has ended. So when the relay sees a gap (id n missing while n+1 is visible), it
lists the transactions holding that lock *after* the read that showed the gap: every transaction
that drew an id and has not ended is among them. Once none of them holds it any more, a fresh
read shows every id that committed; one still missing was rolled back after numbering and is
skipped. The wait is one commit instant, never an open transaction. Published events are strictly
increasing per channel, so subscribers and recovery never skip an id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from loguru import logger

from common import housekeeping, outbox
from common.config import Retention
from common.db import connect
from common.events import NOTIFY_CHANNEL, REDIS_PREFIX, RELAY_WATERMARK_KEY, Event
from common.outbox import PURGED_CURSOR, RELAY_CURSOR
from relay.metrics import RECONNECTS, RELAYS, observe_relay_lag
from relay.publisher import publisher_for
from relay.settle import Gap, settle

__all__ = ["CURSOR_NAME", "LEADER_LOCK_KEY", "PURGED_NAME", "Gap", "Relay", "settle"]

LEADER_LOCK_KEY = 0x646D735F72656C  # "dms_rel"
NUMBERING_LOCK_KEY = 0x646D735F6E756D  # "dms_num": events_number_lock_key() in sql/0008
SLOW_BARRIER_S = 2.0  # a numberer holds the lock for a commit instant; longer is worth a warning
# The transactions holding the numbering lock in this database (a bigint advisory key is split
# into two oids).
_NUMBERING_NOW = (
    "SELECT coalesce(array_agg(virtualtransaction), '{}') AS holders FROM pg_locks"
    " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    f" AND classid::bigint = {NUMBERING_LOCK_KEY >> 32} AND objid::bigint = {NUMBERING_LOCK_KEY & 0xFFFFFFFF}"
)
CURSOR_NAME = RELAY_CURSOR
PURGED_NAME = PURGED_CURSOR
WATERMARK_CHECK_EVERY_S = 1.0
CURSOR_SAVE_EVERY_S = 0.1  # while draining a backlog; a catch-up always saves the cursor as it ends


class Relay:
    """Runs while `should_run()` is true; leads when it holds the PostgreSQL advisory lock."""

    def __init__(
        self,
        *,
        listen_url: str,
        redis_client: redis.Redis,
        poll_interval_s: float = 1.0,
        batch_size: int = 500,
        retention_hours: float = 24.0,
        retention_every_s: float = 60.0,
        housekeeping_retention: Retention | None = None,
        standby_retry_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.listen_url = listen_url
        self.redis = redis_client
        self.publisher = publisher_for(redis_client)
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.retention_hours = retention_hours
        self.retention_every_s = retention_every_s
        self.housekeeping_retention = housekeeping_retention or Retention()
        self.standby_retry_s = standby_retry_s
        self.sleep = sleep
        self.last_id = 0
        self.is_leader = False
        self.published_total = 0
        self._gap: Gap | None = None
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        RELAYS.track(self)

    def run(self, should_run: Callable[[], bool]) -> None:
        """Lead or stand by until `should_run()` turns false; survive database and Redis loss."""
        backoff = self.standby_retry_s
        while should_run():
            try:
                self._conn = connect(self.listen_url, autocommit=True)
                if self._try_lead(self._conn):
                    backoff = self.standby_retry_s
                    self._lead(self._conn, should_run)
                else:
                    self._conn.close()
                    self._conn = None
                    self.sleep(self.standby_retry_s)
            except (psycopg.Error, redis.RedisError, OSError) as exc:
                RECONNECTS.labels("relay", "redis" if isinstance(exc, redis.RedisError) else "postgres").inc()
                logger.bind(leader=self.is_leader).warning("relay lost a connection: {}: {}",
                                                           type(exc).__name__, exc)
                self.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._release()

    def _release(self) -> None:
        if self.is_leader:
            logger.info("relay stepping down at event {}", self.last_id)
        self.is_leader = False
        if self._conn is not None:
            try:
                self._conn.close()  # closing the session frees the advisory lock
            except psycopg.Error:
                pass
            self._conn = None

    def _try_lead(self, conn: psycopg.Connection[dict[str, Any]]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (LEADER_LOCK_KEY,)).fetchone()
        if not row or not row["locked"]:
            return False
        cursor = conn.execute("SELECT last_id FROM relay_cursor WHERE name = %s", (CURSOR_NAME,)).fetchone()
        self.last_id = int(cursor["last_id"]) if cursor else 0
        self._gap = None
        self.is_leader = True
        # This session writes the cursor several times a second, and it only ever trails what
        # Redis has: losing its last writes in a crash means some events published twice
        # (subscribers drop ids they have seen), never one skipped. No reason to wait for a WAL
        # flush each time. Its other writes (retention deletes, housekeeping) are done again
        # next round if lost.
        conn.execute("SET synchronous_commit = off")
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.redis.set(RELAY_WATERMARK_KEY, self.last_id)
        logger.info("relay leading from event {}", self.last_id)
        return True

    def _lead(self, conn: psycopg.Connection[dict[str, Any]], should_run: Callable[[], bool]) -> None:
        next_retention = next_watermark_check = time.monotonic()
        while should_run():
            self.catch_up(conn)
            if time.monotonic() >= next_watermark_check:
                # Redis may have restarted and lost the watermark: put it back. Once a second, not
                # per wake-up: every publish sets it anyway, and a subscribe waits for it a few seconds.
                self.redis.set(RELAY_WATERMARK_KEY, self.last_id, nx=True)
                next_watermark_check = time.monotonic() + WATERMARK_CHECK_EVERY_S
            if time.monotonic() >= next_retention:
                self.purge_old_events(conn)
                housekeeping.run(conn, self.housekeeping_retention)  # idempotency keys, samples, GPS day partitions
                next_retention = time.monotonic() + self.retention_every_s
            wait_s = 0.02 if self._gap is not None else self.poll_interval_s
            for _ in conn.notifies(timeout=wait_s, stop_after=1):
                pass

    def catch_up(self, conn: psycopg.Connection[dict[str, Any]]) -> int:
        """Publish every settled event after `last_id`; return how many."""
        published = saved = 0
        save_due = time.monotonic() + CURSOR_SAVE_EVERY_S
        while True:
            rows = self._read(conn)
            ready, self._gap = settle(rows, last_id=self.last_id, gap=self._gap)
            if ready:
                self._publish(ready)
                published += len(ready)
                # Through a backlog, batch after batch, the cursor is saved a few times a second
                # rather than after each: a crash then costs a few more events published twice.
                if time.monotonic() >= save_due:
                    self._save_cursor(conn)
                    saved, save_due = published, time.monotonic() + CURSOR_SAVE_EVERY_S
            if self._gap is not None and not self._gap.barrier_passed:
                self._gap.barrier_passed = self._numberers_done(conn, self._gap)
                if self._gap.barrier_passed:
                    continue  # read again at once: what is still missing was rolled back
            if len(rows) < self.batch_size or not ready:
                if published > saved:
                    self._save_cursor(conn)
                return published

    def _numberers_done(self, conn: psycopg.Connection[dict[str, Any]], gap: Gap) -> bool:
        """Have the transactions that were numbering after the gap was seen all ended?"""
        row = conn.execute(_NUMBERING_NOW).fetchone()
        now_holding = set(row["holders"]) if row else set()
        if gap.holders is None:  # first look, right after the read that showed the gap
            gap.holders, gap.since = sorted(now_holding), time.monotonic()
            return not now_holding
        waiting_for = now_holding.intersection(gap.holders)
        if waiting_for and time.monotonic() - gap.since > SLOW_BARRIER_S:
            # Numbered early (SET CONSTRAINTS ... IMMEDIATE) or prepared, and still open.
            logger.bind(first_missing=gap.first_missing, holders=sorted(waiting_for)).warning(
                "relay: a transaction has held event ids for over {:.0f}s", SLOW_BARRIER_S)
            gap.since = time.monotonic()
        return not waiting_for

    def _read(self, conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
        # Unnumbered rows (id NULL: their transaction has not committed) never match `id > %s`.
        return conn.execute(
            "SELECT id, channels, event, data, created_at FROM events WHERE id > %s ORDER BY id LIMIT %s",
            (self.last_id, self.batch_size),
        ).fetchall()

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        # The publisher keeps the watermark promise (relay/publisher.py): a gateway that subscribes
        # and then reads the watermark gets every event above it live. One Redis: one MULTI/EXEC
        # (relay/publish.py); a cluster: the watermark first, then SPUBLISH per shard.
        messages = [(REDIS_PREFIX + channel, outbox.encode(event.id, frame))
                    for event in map(Event.from_row, rows) for channel, frame in event.frames()]
        last = int(rows[-1]["id"])
        self.publisher.publish(messages, watermark=last)
        self.last_id = last
        self.published_total += len(rows)
        observe_relay_lag(rows)

    def _save_cursor(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        conn.execute(
            "INSERT INTO relay_cursor (name, last_id) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id, updated_at = now()",
            (CURSOR_NAME, self.last_id),
        )

    def purge_old_events(self, conn: psycopg.Connection[dict[str, Any]], *, batch: int = 5000) -> int:
        """Delete published events older than retention in small batches (row locks only)."""
        deleted_total = 0
        while True:
            row = conn.execute(
                "WITH doomed AS (SELECT id FROM events WHERE created_at < now() - make_interval(secs => %s)"
                " AND id <= %s ORDER BY id LIMIT %s),"
                " gone AS (DELETE FROM events WHERE id IN (SELECT id FROM doomed) RETURNING id)"
                " SELECT count(*) AS n, max(id) AS max_id FROM gone",
                (self.retention_hours * 3600, self.last_id, batch),
            ).fetchone()
            if not row or not row["n"]:
                return deleted_total
            deleted_total += int(row["n"])
            conn.execute(
                "INSERT INTO relay_cursor (name, last_id) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
                " SET last_id = greatest(relay_cursor.last_id, excluded.last_id), updated_at = now()",
                (PURGED_NAME, int(row["max_id"])),
            )
            logger.info("purged {} events up to {}", row["n"], row["max_id"])
