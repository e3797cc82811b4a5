from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.db import connect
from common.migrations import SQL_DIR, MigrationError, migrate
from devstack import embedded
from tests.fix_infra import Infra


@pytest.fixture
def fresh_db(infra: Infra, request: pytest.FixtureRequest) -> str:
    name = "mig_" + request.node.name.replace("-", "_")[:40].lower()
    url = embedded.create_database(infra.postgres.port, name)
    with connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


def _copy_sql(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


def test_fresh_database_gets_every_file_once(fresh_db: str) -> None:
    applied = migrate(fresh_db)
    assert applied == sorted(path.name for path in SQL_DIR.glob("*.sql"))
    assert migrate(fresh_db) == []
    with connect(fresh_db) as conn:
        names = [row["name"] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == applied


def test_an_edited_applied_file_stops_the_runner(fresh_db: str, tmp_path: Path) -> None:
    directory = _copy_sql(tmp_path)
    migrate(fresh_db, directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(fresh_db, directory)


def test_a_failing_file_rolls_back_and_is_not_recorded(fresh_db: str, tmp_path: Path) -> None:
    directory = _copy_sql(tmp_path)
    (directory / "9000_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();\n")
    with pytest.raises(Exception, match="no_such_function"):
        migrate(fresh_db, directory)
    with connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('half_done') AS t").fetchone()["t"] is None  # type: ignore[index]
        recorded = conn.execute("SELECT count(*) AS n FROM schema_migrations WHERE name = '9000_broken.sql'")
        assert recorded.fetchone()["n"] == 0  # type: ignore[index]


def test_a_concurrent_index_file_runs_outside_a_transaction(fresh_db: str, tmp_path: Path) -> None:
    directory = _copy_sql(tmp_path)
    (directory / "9001_concurrent.sql").write_text(
        "-- dms:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_notes ON orders (notes);\n"
    )
    assert "9001_concurrent.sql" in migrate(fresh_db, directory)
    with connect(fresh_db) as conn:
        row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_notes'::regclass").fetchone()
    assert row is not None and row["indisvalid"]


def test_badly_named_files_are_refused(fresh_db: str, tmp_path: Path) -> None:
    directory = _copy_sql(tmp_path)
    (directory / "extra.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        migrate(fresh_db, directory)
