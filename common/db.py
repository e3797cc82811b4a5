"""psycopg 3 connection pools: one primary pool, optional replica pools, dict rows."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

STATEMENT_TIMEOUT_MS = 5000


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    conn.execute("SET idle_in_transaction_session_timeout = 30000")
    conn.commit()


def make_pool(
    url: str,
    *,
    name: str,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = 5.0,
) -> ConnectionPool[psycopg.Connection[dict[str, Any]]]:
    """A closed pool: the app factory opens it, so importing never connects.

    `prepare_threshold=None` keeps statements unprepared, which PgBouncer in transaction mode needs.
    """
    return ConnectionPool(
        url,
        name=name,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        open=False,
        configure=_configure,
        kwargs={"row_factory": dict_row, "prepare_threshold": None, "application_name": f"dms-{name}"},
        connection_class=psycopg.Connection[dict[str, Any]],
    )


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[dict[str, Any]]:
    """A direct connection outside any pool (migrations, LISTEN, admin tasks)."""
    return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, prepare_threshold=None)
