"""Housekeeping: batched sweeps, GPS day partitions made ahead and dropped whole, run by the relay leader."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from common import housekeeping
from common.config import Config, ConfigError, Retention
from common.db import APP_ROLE, Claims, connect, database_role
from common.locations import store_points
from common.migrations import migrate
from devstack import embedded
from relay.loop import Relay
from tests.fix_infra import Infra
from tests.helpers import wait_for


@pytest.fixture
def fresh_db(infra: Infra) -> str:
    """A database of its own: these tests drop partitions and sweep whole tables."""
    name = f"hk_{uuid.uuid4().hex[:10]}"
    url = embedded.create_database(infra.postgres.port, name)
    migrate(url)
    return url


def _driver(conn: Any) -> str:
    driver_id = str(uuid.uuid4())
    conn.execute("INSERT INTO profiles (id, role) VALUES (%s, 'driver')", (driver_id,))
    conn.execute("INSERT INTO drivers (id) VALUES (%s)", (driver_id,))
    return driver_id


def _partitions(conn: Any) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in housekeeping.location_partitions(conn)}


def _utc_day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).strftime("%Y%m%d")


def test_sweeps_delete_only_expired_rows_in_batches(fresh_db: str) -> None:
    user = str(uuid.uuid4())
    with connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at)"
            " SELECT %s, 'old-' || n, 'h', now() - interval '30 hours' FROM generate_series(1, 2500) AS n", (user,))
        conn.execute("INSERT INTO idempotency_keys (user_id, key, request_hash, created_at)"
                     " SELECT %s, 'new-' || n, 'h', now() - interval '1 hour' FROM generate_series(1, 5) AS n", (user,))
        sample = ("INSERT INTO performance_samples (at, source, pool_size, pool_in_use, pool_waiting, pool_max_size,"
                  " query_samples) VALUES (now() - %s::interval, 'hk', 1, 0, 0, 1, 0)")
        for age in ("9 days", "9 days", "1 day"):
            conn.execute(sample, (age,))

        # Batches of 1000, at most two per run: a backlog is worked off over several runs.
        assert housekeeping.sweep(conn, "idempotency_keys", "created_at", timedelta(hours=24),
                                  batch=1000, max_batches=2) == 2000
        report = housekeeping.run(conn, Retention(idempotency_hours=24, location_days=30))
        assert report.idempotency_keys == 500 and report.performance_samples == 2 and report.skipped == []
        keys = conn.execute("SELECT key FROM idempotency_keys WHERE user_id = %s ORDER BY key", (user,)).fetchall()
        assert [row["key"] for row in keys] == [f"new-{n}" for n in range(1, 6)]
        left = conn.execute("SELECT count(*) AS n FROM performance_samples WHERE source = 'hk'").fetchone()
        assert left == {"n": 1}


def test_partitions_are_made_ahead_and_old_days_dropped_whole(fresh_db: str) -> None:
    with connect(fresh_db, autocommit=True) as conn:
        # A new database's catch-all partition for older points is empty: drop it so that days in
        # the past can get partitions of their own, as on a database that has run for months.
        conn.execute("ALTER TABLE driver_locations DETACH PARTITION driver_locations_legacy")
        conn.execute("DROP TABLE driver_locations_legacy")
        retention = Retention(idempotency_hours=24, location_days=30)
        first = housekeeping.run(conn, retention)  # the days the catch-all covered get their own
        assert first.partitions_created == [f"driver_locations_p{_utc_day(n)}" for n in (-1, 0, 1)]
        driver = _driver(conn)
        for offset in (-40, -31, -29):
            day = (datetime.now(UTC).date() + timedelta(days=offset))
            conn.execute("SELECT dms_create_location_partition(%s)", (day,))
            with conn.transaction():
                store_points(conn, [(driver, 1.0, 2.0, None, None, None,
                                     datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12))])
        with conn.transaction():
            store_points(conn, [(driver, 3.0, 4.0, None, None, None, datetime.now(UTC))])

        report = housekeeping.run(conn, retention)

        assert sorted(report.partitions_dropped) == [f"driver_locations_p{_utc_day(-40)}",
                                                     f"driver_locations_p{_utc_day(-31)}"]
        assert report.partitions_created == []
        names = set(_partitions(conn))
        assert {f"driver_locations_p{_utc_day(n)}" for n in [-29, *range(-1, 8)]} == names
        rows = conn.execute("SELECT lat FROM driver_locations WHERE driver_id = %s ORDER BY lat",
                            (driver,)).fetchall()
        assert [row["lat"] for row in rows] == [1.0, 3.0]  # the kept day and today


def test_an_interrupted_detach_is_finished_at_the_next_run(fresh_db: str) -> None:
    with connect(fresh_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE driver_locations DETACH PARTITION driver_locations_legacy")
        conn.execute("DROP TABLE driver_locations_legacy")
        old = datetime.now(UTC).date() - timedelta(days=40)
        conn.execute("SELECT dms_create_location_partition(%s)", (old,))
        name: str = f"driver_locations_p{old:%Y%m%d}"
        # What a connection lost between DETACH CONCURRENTLY's two transactions leaves behind.
        conn.execute("UPDATE pg_inherits SET inhdetachpending = true WHERE inhrelid = %s::regclass", (name,))
        assert _partitions(conn)[name]["detach_pending"] is True
        assert housekeeping.drop_location_partitions(conn, retention_days=30) == [name]
        assert name not in _partitions(conn)


def test_the_relay_leader_runs_housekeeping(fresh_db: str, infra: Infra) -> None:
    ahead = f"driver_locations_p{_utc_day(7)}"
    with connect(fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE driver_locations DETACH PARTITION {ahead}")
        conn.execute(f"DROP TABLE {ahead}")
        conn.execute("INSERT INTO idempotency_keys (user_id, key, request_hash, created_at)"
                     " VALUES (gen_random_uuid(), 'stale', 'h', now() - interval '3 days')")
    running = threading.Event()
    running.set()
    relay = Relay(listen_url=fresh_db, redis_client=redis.Redis.from_url(infra.redis_url), poll_interval_s=0.05)
    thread = threading.Thread(target=relay.run, args=(running.is_set,), daemon=True)
    thread.start()
    try:
        with connect(fresh_db, autocommit=True) as conn:
            wait_for(lambda: ahead in _partitions(conn), timeout_s=15, message="the day-7 partition")
            left = conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()
            assert left == {"n": 0}
    finally:
        running.clear()
        thread.join(timeout=10)


def _plan(conn: Any, query: str, params: tuple[Any, ...]) -> str:
    conn.execute("SET LOCAL enable_seqscan = off")  # tiny partitions: show the indexes are usable
    row = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()
    assert row is not None
    return json.dumps(row["QUERY PLAN"])


def test_lookups_on_the_partitioned_table_use_each_partitions_index(fresh_db: str) -> None:
    with connect(fresh_db) as conn:
        driver = _driver(conn)
        store_points(conn, [(driver, 1.0, 1.0, None, None, None, datetime.now(UTC))])
        conn.commit()
        latest = _plan(conn, "SELECT lat, lng, recorded_at FROM driver_locations WHERE driver_id = %s"
                             " ORDER BY recorded_at DESC LIMIT 1", (driver,))
        assert "driver_locations_driver_recorded_p" in latest and "driver_locations_driver_recorded_legacy" in latest
        assert "Seq Scan" not in latest
        # A time range reads only the partitions it overlaps (pruned at plan time).
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=3)
        ranged = _plan(conn, "SELECT lat FROM driver_locations WHERE driver_id = %s"
                             " AND recorded_at >= %s AND recorded_at < %s", (driver, day, day + timedelta(days=1)))
        assert f"driver_locations_driver_recorded_p{_utc_day(3)}" in ranged
        assert "driver_locations_legacy" not in ranged and f"_p{_utc_day(4)}" not in ranged
        assert "Seq Scan" not in ranged
        conn.rollback()
        # Row-level security through the parent: a driver's own points, by the same indexes.
        conn.execute("SELECT set_config('role', %s, true), set_config('dms.role', 'driver', true),"
                     " set_config('dms.user_id', %s, true)",
                     (database_role(Claims("driver", driver), APP_ROLE), driver))
        own = _plan(conn, "SELECT lat FROM driver_locations", ())
        assert "driver_locations_driver_recorded_p" in own and "Seq Scan" not in own
        assert conn.execute("SELECT count(*) AS n FROM driver_locations").fetchone() == {"n": 1}
        conn.execute("SELECT set_config('dms.user_id', %s, true)", (str(uuid.uuid4()),))
        assert conn.execute("SELECT count(*) AS n FROM driver_locations").fetchone() == {"n": 0}


def test_a_step_that_cannot_get_its_lock_is_skipped_not_waited_for(fresh_db: str) -> None:
    ahead = f"driver_locations_p{_utc_day(7)}"
    with connect(fresh_db, autocommit=True) as conn, connect(fresh_db) as blocker:
        conn.execute(f"ALTER TABLE driver_locations DETACH PARTITION {ahead}")
        conn.execute(f"DROP TABLE {ahead}")
        # A session holding what ATTACH needs (say, a long VALIDATE or a manual maintenance job).
        blocker.execute("LOCK TABLE driver_locations IN SHARE UPDATE EXCLUSIVE MODE")
        report = housekeeping.run(conn, Retention(idempotency_hours=24, location_days=30))
        assert report.skipped == ["create_partitions"] and ahead not in _partitions(conn)
        blocker.rollback()
        assert housekeeping.run(conn, Retention(idempotency_hours=24, location_days=30)).partitions_created == [
            ahead]


def test_retention_settings_are_read_validated_and_default_to_the_contract() -> None:
    base = {"DATABASE_URL": "postgresql://dms:s3cret@db1:5432,db2:5432/dms?target_session_attrs=read-write",
            "REDIS_URL": "redis://127.0.0.1:6379/0"}
    config = Config.from_env(base)
    assert (config.idempotency_retention_hours, config.location_retention_days) == (24.0, 30)
    assert "s3cret" not in str(config.public_summary())
    # The relay hands housekeeping `Config.retention`: nothing re-reads the environment.
    assert Config.from_env({**base, "IDEMPOTENCY_RETENTION_HOURS": "6", "LOCATION_RETENTION_DAYS": "90"}
                           ).retention == Retention(6.0, 90)
    with pytest.raises(ConfigError, match="LOCATION_RETENTION_DAYS"):
        Config.from_env({**base, "LOCATION_RETENTION_DAYS": "1"})  # a day's late points need two
    with pytest.raises(ConfigError, match="IDEMPOTENCY_RETENTION_HOURS"):
        Config.from_env({**base, "IDEMPOTENCY_RETENTION_HOURS": "soon"})
