"""statement_timeout holds for every pooled transaction, also when its session lost the setting."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common import db
from common.db import connect, make_pool
from devstack import embedded, pgbouncer
from tests.fix_infra import Infra
from tests.helpers import wait_for

TIMEOUT_MS = 300
SLEEP_S = 3  # ten times the timeout: a statement that ran it out was not cut


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "STATEMENT_TIMEOUT_MS", TIMEOUT_MS)


def _assert_cut(pool: Any) -> None:
    with pool.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": f"{TIMEOUT_MS}ms"}
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(%s)", (SLEEP_S,))


def test_a_session_that_lost_its_timeout_still_times_out_per_transaction(infra: Infra) -> None:
    pool = make_pool(infra.database_url, name="timeout", min_size=1, max_size=1)
    pool.open(wait=True)
    try:
        with pool.connection() as conn:
            # Session state the pool cannot see: what a server connection handed to us by PgBouncer
            # after a reconnect looks like.
            conn.execute("SET SESSION statement_timeout = 0")
            conn.commit()
        _assert_cut(pool)
    finally:
        pool.close()


@pytest.fixture
def bouncer(infra: Infra, tmp_path: Path) -> Iterator[str]:
    if pgbouncer.pgbouncer_binary() is None:
        pytest.skip("skipped: needs pgbouncer, which pip cannot install")
    name = f"st_{uuid.uuid4().hex[:8]}"
    embedded.create_database(infra.postgres.port, name)
    port = embedded.free_port()
    server = pgbouncer.start(tmp_path / "pgbouncer", database=name, pg_port=infra.postgres.port, listen_port=port)
    yield f"postgresql://postgres@127.0.0.1:{port}/{name}"
    server.stop(sig=signal.SIGINT, timeout_s=10)


@pytest.mark.needs_system("pgbouncer")
def test_the_timeout_survives_pgbouncer_replacing_the_server_connection(infra: Infra, bouncer: str) -> None:
    database = bouncer.rsplit("/", 1)[1]
    pool = make_pool(bouncer, name="timeout", min_size=1, max_size=1, app_role=None)
    pool.open(wait=True)
    try:
        with pool.connection() as conn:
            client = conn
            first = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        # PgBouncer's server connection ends (server_lifetime, a PostgreSQL restart, a failover);
        # the client's connection to PgBouncer stays, so the pool never configures it again.
        with connect(f"postgresql://postgres@127.0.0.1:{infra.postgres.port}/postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            wait_for(lambda: admin.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = %s",
                                           (database,)).fetchone() == {"n": 0}, message="the server connection gone")

        def fresh_server() -> bool:
            try:
                with pool.connection() as conn:
                    return conn.execute("SELECT pg_backend_pid() AS pid").fetchone() != first
            except psycopg.OperationalError:
                return False  # PgBouncer reports the dead server connection once

        wait_for(fresh_server, timeout_s=10, message="a new server connection behind PgBouncer")
        with pool.connection() as conn:
            assert conn is client  # the same client connection: `configure` did not run again
        _assert_cut(pool)
    finally:
        pool.close()
