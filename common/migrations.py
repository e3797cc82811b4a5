"""Applies `sql/NNNN_name.sql` files once each, in order, and refuses edited history."""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger

from common.db import connect


def _sql_dir() -> Path:
    """`sql/` beside the packages in a checkout; an installed wheel carries it as data files."""
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "dms-realtime" / "sql"


SQL_DIR = _sql_dir()
NO_TRANSACTION_MARK = "-- dms:no-transaction"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x646D735F6D6967  # "dms_mig": one migrator at a time across processes


class MigrationError(RuntimeError):
    """The database and the files disagree; nothing further was applied."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(NO_TRANSACTION_MARK)


def discover(directory: Path = SQL_DIR) -> list[Migration]:
    """Every migration file in name order; a badly named `.sql` file is an error, not skipped."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        if not _NAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(path.name, path.read_text()))
    numbers = [m.name[:4] for m in found]
    if len(numbers) != len(set(numbers)):
        raise MigrationError("two migration files share a number")
    return found


def migrate(url: str, directory: Path = SQL_DIR, *,
            on_applied: Callable[[str, float], None] | None = None) -> list[str]:
    """Apply what has not run yet; return the names applied. `on_applied(name, seconds)` after each."""
    migrations = discover(directory)
    if not migrations:
        # An installation without its migration files would otherwise report "applied 0" on an
        # empty database and leave every process failing later on missing tables.
        raise MigrationError(f"no migration files in {directory}: the installation is incomplete, reinstall it")
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute("SELECT name, checksum FROM schema_migrations").fetchall()
            applied = {row["name"]: row["checksum"] for row in rows}
            for migration in migrations:
                recorded = applied.get(migration.name)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise MigrationError(
                            f"{migration.name} was changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                started = time.monotonic()
                _apply(conn, migration)
                elapsed = time.monotonic() - started
                applied_now.append(migration.name)
                logger.info("applied migration {} in {:.2f}s", migration.name, elapsed)
                if on_applied is not None:
                    on_applied(migration.name, elapsed)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    record = "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)"
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(record, (migration.name, migration.checksum))
        return
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction block, and a multi-statement
    # string is one implicit transaction: run statement by statement in autocommit.
    for statement in _statements(migration.sql):
        conn.execute(statement)
    conn.execute(record, (migration.name, migration.checksum))


def _statements(sql: str) -> list[str]:
    """Split a no-transaction file on semicolons at line ends (such files hold simple DDL only)."""
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [part.strip() for part in re.split(r";\s*$", body, flags=re.MULTILINE) if part.strip()]
