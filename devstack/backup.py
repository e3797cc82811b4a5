"""Backups with pg_dump's custom format, and restores into an empty database only."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from common.db import connect
from devstack import embedded


class BackupError(RuntimeError):
    """A dump or restore failed, or was refused; the message says why."""


def pg_program(name: str) -> str:
    """pg_dump / pg_restore: the embedded PostgreSQL's (same major as the server it runs), else PATH's."""
    try:
        shipped = embedded.postgres_bin_dir() / name
    except embedded.EmbeddedError:
        shipped = None
    if shipped is not None and shipped.exists():
        return str(shipped)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client programs")
    return found


def default_path(directory: Path) -> Path:
    return directory / f"dms-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.dump"


def backup(url: str, out: Path, *, on_progress: Callable[[int], None] | None = None,
           progress_interval_s: float = 1.0) -> Path:
    """Write a custom-format dump of the whole database (schema, data, grants, policies) to `out`.

    Custom format is compressed and lets pg_restore pick objects or run in parallel. The file is
    written beside its final name and renamed, so a failed dump never leaves a truncated backup
    that looks complete; it is readable by its owner only, since it holds every row.
    `on_progress(bytes_so_far)` is called every `progress_interval_s` while pg_dump runs.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot write to {out.parent}: {exc}") from exc
    partial = out.with_name(out.name + ".partial")
    process = subprocess.Popen([pg_program("pg_dump"), "--format=custom", "--file", str(partial), "--dbname", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            _, stderr = process.communicate(timeout=progress_interval_s)
            break
        except subprocess.TimeoutExpired:
            if on_progress is not None:
                on_progress(_size(partial))
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {stderr.strip()[-2000:]}")
    os.chmod(partial, 0o600)
    partial.replace(out)
    logger.bind(path=str(out), bytes=out.stat().st_size).info("backup written")
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# The cluster-wide roles the dump's grants and policies name (sql/0007): a fresh cluster lacks them.
_ROLES = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dms_app') THEN
        CREATE ROLE dms_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dms_staff') THEN
        CREATE ROLE dms_staff NOLOGIN NOSUPERUSER BYPASSRLS;
    END IF;
END
$$;
"""


def user_tables(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
        ).fetchone()
    return int(row["n"]) if row else 0


def restore(url: str, dump: Path) -> None:
    """Restore `dump` into the empty database at `url`, all or nothing (one transaction).

    A database that already holds tables is refused: restoring over live data would mix two
    histories (and fail half-way on every existing object).
    """
    if not dump.is_file():
        raise BackupError(f"{dump}: no such backup file")
    existing = user_tables(url)
    if existing:
        raise BackupError(f"refusing to restore: the target database is not empty ({existing} tables or "
                          "sequences); create an empty database (createdb) and point DATABASE_URL at it")
    with connect(url, autocommit=True) as conn:
        conn.execute(_ROLES)
    result = subprocess.run([pg_program("pg_restore"), "--exit-on-error", "--single-transaction",
                             "--dbname", url, str(dump)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed (nothing was restored): {result.stderr.strip()[-2000:]}")
    logger.bind(path=str(dump)).info("backup restored")
