"""`dms backup` / `dms restore` with the real pg_dump and pg_restore; production migrations back up first."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from common.db import connect
from common.migrations import migrate
from devstack import embedded
from devstack.backup import pg_program
from tests.fix_infra import Infra
from tests.helpers import ROOT, seconds


def _dms(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=seconds(120), check=False)


def _database(infra: Infra, prefix: str) -> str:
    return embedded.create_database(infra.postgres.port, f"{prefix}_{uuid.uuid4().hex[:8]}")


def test_a_backup_restores_into_an_empty_database_and_never_over_a_full_one(infra: Infra, tmp_path: Path) -> None:
    source = _database(infra, "bk_src")
    migrate(source)
    restaurant = str(uuid.uuid4())
    with connect(source) as conn:
        conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'backed up')", (restaurant,))
        conn.execute("INSERT INTO products (name, category, price)"
                     " SELECT 'p' || n, 'c', n FROM generate_series(1, 500) n")
        conn.commit()
    dump = tmp_path / "nightly.dump"
    made = _dms("backup", "--out", str(dump), env={"DATABASE_URL": source, "DMS_HOME": str(tmp_path)})
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(dump) and oct(dump.stat().st_mode & 0o777) == "0o600"
    listing = subprocess.run([pg_program("pg_restore"), "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    assert "Format: CUSTOM" in listing

    target = _database(infra, "bk_dst")
    restored = _dms("restore", str(dump), env={"DATABASE_URL": target, "DMS_HOME": str(tmp_path)})
    assert restored.returncode == 0, restored.stderr
    with connect(target) as conn:
        assert conn.execute("SELECT name FROM restaurants WHERE id = %s", (restaurant,)).fetchone() == {
            "name": "backed up"}
        assert conn.execute("SELECT count(*) AS n FROM products").fetchone() == {"n": 500}
        # The schema came back whole: row security, the partitioned GPS table, migration history.
        assert conn.execute("SELECT relrowsecurity AS on FROM pg_class WHERE relname = 'orders'").fetchone() == {
            "on": True}
        assert conn.execute("SELECT count(*) > 1 AS yes FROM driver_locations_partitions()").fetchone() == {
            "yes": True}
    assert migrate(target) == []

    again = _dms("restore", str(dump), env={"DATABASE_URL": target, "DMS_HOME": str(tmp_path)})
    assert again.returncode == 1 and "not empty" in again.stderr
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) AS n FROM products").fetchone() == {"n": 500}
    missing = _dms("restore", str(tmp_path / "nope.dump"), env={"DATABASE_URL": target})
    assert missing.returncode == 1 and "no such backup file" in missing.stderr


def test_production_migrations_take_a_backup_first_unless_told_not_to(infra: Infra, tmp_path: Path) -> None:
    url = _database(infra, "bk_prod")
    home = tmp_path / "home"
    env = {"DATABASE_URL": url, "DMS_HOME": str(home), "DMS_ENV": "production"}
    first = _dms("migrate", env=env)
    assert first.returncode == 0, first.stderr
    (dump,) = (home / "backups").glob("dms-*.dump")
    assert f"backup before migrating: {dump}" in first.stdout
    assert _dms("migrate", env=env).returncode == 0
    assert len(list((home / "backups").glob("*.dump"))) == 1  # nothing pending: no new backup

    other = _database(infra, "bk_prod")
    skipped = _dms("migrate", "--no-backup", env={**env, "DATABASE_URL": other, "DMS_HOME": str(tmp_path / "h2")})
    assert skipped.returncode == 0 and "backup" not in skipped.stdout
    assert not (tmp_path / "h2" / "backups").exists()
    dev = _dms("migrate", env={**env, "DMS_ENV": "dev", "DATABASE_URL": _database(infra, "bk_dev"),
                               "DMS_HOME": str(tmp_path / "h3")})
    assert dev.returncode == 0 and not (tmp_path / "h3" / "backups").exists()


def test_a_failed_backup_stops_a_production_migration(infra: Infra, tmp_path: Path) -> None:
    url = _database(infra, "bk_fail")
    home = tmp_path / "home"
    home.mkdir()
    (home / "backups").write_text("a file where the backup directory should be")
    result = _dms("migrate", env={"DATABASE_URL": url, "DMS_HOME": str(home), "DMS_ENV": "production"})
    assert result.returncode == 1 and "nothing was migrated" in result.stderr, result.stderr
    with connect(url) as conn:
        assert conn.execute("SELECT to_regclass('orders') AS t").fetchone() == {"t": None}
