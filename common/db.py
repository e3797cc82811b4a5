"""psycopg 3 connection pools: one primary pool, optional replica pools, dict rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

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


QueryObserver = Callable[[float], None]


def time_queries(pool: ConnectionPool[Any], observe: QueryObserver) -> None:
    """Report every statement's duration (seconds) run through `pool` to `observe`; before `open()`.

    Timing lives in the connections' cursor class, so each query made through `pool.connection()`
    is measured once, in one place, whatever code runs it.
    """
    if not pool.closed:
        raise RuntimeError("time_queries() must be called before the pool opens")
    if not isinstance(pool.kwargs, dict):
        raise TypeError("time_queries() needs a pool built with a kwargs dict (make_pool)")
    pool.kwargs["cursor_factory"] = _timed_cursor(observe)


def _timed_cursor(observe: QueryObserver) -> type[psycopg.Cursor[Any]]:
    @contextmanager
    def timed() -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            observe(time.perf_counter() - started)

    class TimedCursor(psycopg.Cursor[Any]):
        # Signatures stay open: psycopg overloads these (plain queries and t-string templates).
        def execute(self, *args: Any, **kwargs: Any) -> Self:
            with timed():
                return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> None:
            with timed():
                super().executemany(*args, **kwargs)

    return TimedCursor


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[dict[str, Any]]:
    """A direct connection outside any pool (migrations, LISTEN, admin tasks)."""
    return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, prepare_threshold=None)
