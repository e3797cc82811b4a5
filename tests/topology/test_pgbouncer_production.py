"""The production PgBouncer settings as written in deploy/: SCRAM from an auth file, query_timeout, logging."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import psycopg
import pytest

from common.db import connect
from devstack import embedded, pgbouncer
from tests.fix_infra import Infra
from tests.helpers import wait_for

pytestmark = pytest.mark.needs_system("pgbouncer")


def test_scram_from_the_auth_file_query_timeout_and_connection_logging(infra: Infra, tmp_path: Path) -> None:
    role, password = f"scram_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    database = embedded.create_database(infra.postgres.port, f"pgb_{uuid.uuid4().hex[:8]}").rsplit("/", 1)[1]
    with connect(infra.database_url, autocommit=True) as admin:
        admin.execute("SET password_encryption = 'scram-sha-256'")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        row = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert row is not None and row["rolpassword"].startswith("SCRAM-SHA-256$")
    port = embedded.free_port()
    # Every setting as deploy/pgbouncer/pgbouncer.ini has it, auth_type included.
    server = pgbouncer.start(tmp_path / "pgb", database=database, pg_port=infra.postgres.port, listen_port=port,
                             user=role, overrides={"auth_type": "scram-sha-256", "query_timeout": "1"})
    try:
        workdir = Path(server.log_path).parent
        (workdir / "userlist.txt").write_text(f'"{role}" "{row["rolpassword"]}"\n')  # what the comment says to copy
        os.kill(server.pid, signal.SIGHUP)  # PgBouncer re-reads its auth file on reload
        url = f"postgresql://{role}:{password}@127.0.0.1:{port}/{database}"

        def logs_in() -> bool:
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    return conn.execute("SELECT current_user").fetchone() == (role,)
            except psycopg.OperationalError:
                return False

        wait_for(logs_in, timeout_s=10, message="a SCRAM login with the auth file's secret")
        with pytest.raises(psycopg.OperationalError, match=r"password|SASL"):
            psycopg.connect(f"postgresql://{role}:wrong@127.0.0.1:{port}/{database}", connect_timeout=2).close()
        with psycopg.connect(url) as conn, pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT pg_sleep(5)")  # query_timeout: PgBouncer cancels and drops it
        log = server.log_path.read_text()
        assert "login attempt" in log and "closing because" in log
    finally:
        server.stop(sig=signal.SIGINT, timeout_s=10)
        with connect(infra.database_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")
