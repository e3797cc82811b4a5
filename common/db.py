"""psycopg 3 connection pools: one primary pool, optional replica pools, dict rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

STATEMENT_TIMEOUT_MS = 5000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30000
APP_ROLE = "dms_app"
STAFF_ROLE = "dms_staff"  # admins and the gateway's own work: bypasses row security
STAFF_CLAIMS = ("admin", "service")


@dataclass(frozen=True)
class Claims:
    """Who the database should think is asking; row-level security policies read these."""

    role: str
    user_id: str | None = None
    restaurant_id: str | None = None


ANONYMOUS = Claims("none")
SERVICE = Claims("service")  # the gateway's own work: GPS batches, replay, driver rows
_claims: ContextVar[Claims] = ContextVar("dms_claims", default=ANONYMOUS)


@contextmanager
def claims(value: Claims) -> Iterator[None]:
    """Run the enclosed database work as `value` (per greenlet or thread; nests)."""
    token = _claims.set(value)
    try:
        yield
    finally:
        _claims.reset(token)


def set_claims(value: Claims) -> None:
    """Set the claims for the rest of this context (one request's greenlet)."""
    _claims.set(value)


def database_role(who: Claims, app_role: str) -> str:
    """The role a transaction runs as: staff claims bypass row security, everyone else is filtered."""
    return STAFF_ROLE if who.role in STAFF_CLAIMS and app_role == APP_ROLE else app_role


# BEGIN and the claims in one message: the transaction starts with the caller's role, claims and
# timeouts one round trip after checkout instead of two. Transaction-local (set_config(..., true)),
# which PgBouncer's transaction pooling preserves; a session SET would stay on whichever server
# connection ran it and be gone after PgBouncer replaces that connection (server_lifetime).
_BEGIN_WITH_CLAIMS = (
    "BEGIN; SELECT CASE WHEN %s <> '' THEN set_config('role', %s, true) END, set_config('dms.role', %s, true),"
    " set_config('dms.user_id', %s, true), set_config('dms.restaurant_id', %s, true),"
    " set_config('statement_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)"
)


def begin_with_claims(conn: psycopg.Connection[Any], app_role: str | None) -> None:
    """Open a transaction on an idle autocommit connection, running as the current `claims`.

    Two statements in one message need client-side binding. With autocommit on, psycopg sends no
    BEGIN of its own and its connection context commits or rolls back by the server's status.
    """
    who = _claims.get()
    role = database_role(who, app_role) if app_role else ""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(_BEGIN_WITH_CLAIMS, (role, role, who.role, who.user_id or "", who.restaurant_id or "",
                                         str(STATEMENT_TIMEOUT_MS), str(IDLE_IN_TRANSACTION_TIMEOUT_MS)))


def _idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check: only checks, with no round trip (the BEGIN that follows proves the server
    is there, see `Pool.connection`)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.OperationalError(f"pooled connection is not idle: {conn.info.transaction_status.name}")


class Pool(ConnectionPool[psycopg.Connection[dict[str, Any]]]):
    """A psycopg pool whose `connection()` is one transaction under the current `claims`."""

    def __init__(self, conninfo: str, *, app_role: str | None, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        self.app_role = app_role

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection inside a transaction begun with the claims (one message); committed on a clean
        exit, rolled back on an exception. So `conn.transaction()` inside would be a savepoint.

        A connection found dead by the BEGIN (a restarted server or PgBouncer) is dropped and
        another taken, as the pool's check loop does: nothing of the caller's has run on it yet.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            with super().connection(timeout=max(0.0, deadline - time.monotonic())) as conn:
                try:
                    begin_with_claims(conn, self.app_role)
                except psycopg.OperationalError:
                    if not conn.broken or time.monotonic() >= deadline:
                        raise
                    continue  # the pool discards a broken connection when it comes back
                yield conn
                return


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")
    conn.commit()


def make_pool(
    url: str,
    *,
    name: str,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = 5.0,
    app_role: str | None = APP_ROLE,
) -> Pool:
    """A closed pool: the app factory opens it, so importing never connects.

    Every `connection()` is a transaction as `app_role` (None: the login role itself) with the
    current `claims`, so row-level security applies. `prepare_threshold=None` keeps statements
    unprepared, which PgBouncer in transaction mode needs.
    """
    return Pool(
        with_network_defaults(url),
        app_role=app_role,
        name=name,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        open=False,
        configure=_configure,
        check=_idle,
        kwargs={"row_factory": dict_row, "prepare_threshold": None, "application_name": f"dms-{name}",
                "autocommit": True},  # Pool.connection() begins the transaction (begin_with_claims)
        connection_class=psycopg.Connection[dict[str, Any]],
    )


# Failover: a crashed host sends no TCP reset, so without these a connection to it (or a connect
# attempt to a host listed in a multi-host URL) waits for the kernel's timeouts, minutes. With
# them, connecting moves on to the next host after 5 s and an established connection breaks
# after about 15-25 s of silence, so pools, the relay and LISTEN reconnect to the new primary.
# Settings given in the URL win.
NETWORK_DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
                    "keepalives_count": "3", "tcp_user_timeout": "15000"}


def with_network_defaults(url: str) -> str:
    """`url` with NETWORK_DEFAULTS added where it sets none (works for multi-host URLs too)."""
    given = conninfo_to_dict(url)
    missing = {key: value for key, value in NETWORK_DEFAULTS.items() if key not in given}
    return make_conninfo(url, **missing) if missing else url


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
    return psycopg.connect(with_network_defaults(url), autocommit=autocommit, row_factory=dict_row,
                           prepare_threshold=None)
