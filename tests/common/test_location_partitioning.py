"""The partitioning migrations (0010-0012) on 1,000,000 GPS points while a driver keeps writing."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from common.db import connect
from common.locations import store_points
from common.migrations import SQL_DIR, Migration, _apply, discover, migrate
from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import wait_for

POINTS = 1_000_000
DRIVERS = 200
STEPS = ("0010", "0011", "0012")


class Writer(threading.Thread):
    """One point per transaction, as the GPS writers commit them; records the slowest commit."""

    def __init__(self, url: str, driver_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.driver_id = url, driver_id
        self.stop = threading.Event()
        self.written = 0
        self.slowest_s = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        with connect(self.url) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    store_points(conn, [(self.driver_id, 1.0, 1.0, None, None, None, datetime.now(UTC))])
                    conn.commit()
                    self.written += 1
                except psycopg.Error as exc:
                    conn.rollback()
                    self.errors.append(str(exc))
                self.slowest_s = max(self.slowest_s, time.perf_counter() - started)
                time.sleep(0.005)


def test_a_million_points_move_to_partitions_under_short_locks_while_writes_go_on(
        infra: Infra, tmp_path: Path) -> None:
    url = embedded.create_database(infra.postgres.port, f"part_{uuid.uuid4().hex[:8]}")
    before = tmp_path / "before"
    before.mkdir()
    for migration in discover():
        if migration.name[:4] < STEPS[0]:
            shutil.copy(SQL_DIR / migration.name, before / migration.name)
    migrate(url, before)
    with connect(url) as conn:
        conn.execute("INSERT INTO profiles (id, role) SELECT gen_random_uuid(), 'driver' FROM generate_series(1, %s)",
                     (DRIVERS,))
        conn.execute("INSERT INTO drivers (id) SELECT id FROM profiles")
        # 20 days of history, the last point a few seconds ago.
        conn.execute(
            "INSERT INTO driver_locations (driver_id, lat, lng, recorded_at)"
            " SELECT d.ids[1 + n %% %s], 52 + (n %% 1000) / 1e4, 13 + (n %% 777) / 1e4,"
            "        now() - make_interval(secs => (n %% (20 * 86400))::float8)"
            " FROM generate_series(1, %s) AS n, (SELECT array_agg(id) AS ids FROM drivers) AS d",
            (DRIVERS, POINTS))
        conn.execute("ANALYZE driver_locations")
        driver = conn.execute("SELECT id FROM drivers LIMIT 1").fetchone()
        conn.commit()
    assert driver is not None

    writer = Writer(url, str(driver["id"]))
    writer.start()
    wait_for(lambda: writer.written >= 5, timeout_s=10, message="the writer's first points")
    held_s: dict[str, float] = {}
    notices: list[str] = []
    with connect(url, autocommit=True) as conn, connect(url) as open_writer:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("SET client_min_messages = debug1")  # ATTACH says when it skips the scan
        for step in STEPS:
            (name,) = [m.name for m in discover() if m.name.startswith(step)]
            migration = Migration(name, (SQL_DIR / name).read_text())
            if step == "0011":
                # A GPS transaction stays open across the validation: VALIDATE must not wait for it
                # (SHARE UPDATE EXCLUSIVE), else it would fail on this lock timeout.
                store_points(open_writer, [(str(driver["id"]), 2.0, 2.0, None, None, None, datetime.now(UTC))])
                conn.execute("SET lock_timeout = '20s'")
            started = time.perf_counter()
            _apply(conn, migration)  # exactly what `dms migrate` runs for it, on a connection we watch
            held_s[step] = time.perf_counter() - started
            if step == "0011":
                conn.execute("RESET lock_timeout")
                open_writer.commit()
    writer.stop.set()
    writer.join(timeout=10)

    print(f"\n{POINTS:,} points: 0010 (ACCESS EXCLUSIVE, catalog only) {held_s['0010'] * 1000:.0f} ms; "
          f"0011 VALIDATE (writes go on) {held_s['0011'] * 1000:.0f} ms; "
          f"0012 (ACCESS EXCLUSIVE: rename, create, attach) {held_s['0012'] * 1000:.0f} ms; "
          f"slowest concurrent GPS commit {writer.slowest_s * 1000:.0f} ms over {writer.written} commits")
    assert writer.errors == []
    assert any('partition constraint for table "driver_locations_legacy" is implied' in n for n in notices), notices
    # `dms migrate` sees all three as applied (and applies only what came after them)
    assert not [name for name in migrate(url) if name[:4] in STEPS]
    with connect(url) as conn:
        total = conn.execute("SELECT count(*) AS n FROM driver_locations").fetchone()
        assert total == {"n": POINTS + writer.written + 1}
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'driver_locations'").fetchone()
        assert kind == {"relkind": "p"}
        # Ids go on from the old table's sequence: no point written during or after the move
        # reuses one.
        distinct = conn.execute("SELECT count(DISTINCT id) AS n FROM driver_locations").fetchone()
        assert distinct == total
