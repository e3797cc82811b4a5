"""The pool's check only checks; `Pool.connection()` is one transaction under the caller's claims."""

from __future__ import annotations

from psycopg.pq import TransactionStatus

from common.db import Claims, claims, connect, make_pool
from tests.fix_infra import Infra


def test_a_checkout_opens_nothing_and_connection_is_one_transaction_under_the_claims(infra: Infra) -> None:
    pool = make_pool(infra.database_url, name="pool-tx", min_size=1, max_size=1, app_role=None)
    pool.open(wait=True)
    try:
        held = pool.getconn()  # the check ran: it must leave the connection as it found it
        try:
            assert held.info.transaction_status == TransactionStatus.IDLE
        finally:
            pool.putconn(held)
        with claims(Claims("restaurant", user_id="u-1")), pool.connection() as conn:
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            row = conn.execute("SELECT current_setting('dms.role') AS role, current_setting('dms.user_id') AS uid,"
                               " txid_current_if_assigned() IS NULL AS fresh").fetchone()
            assert row == {"role": "restaurant", "uid": "u-1", "fresh": True}
            first = conn.execute("SELECT txid_current() AS id").fetchone()
            with conn.transaction():  # inside the pool's transaction: a savepoint of it
                again = conn.execute("SELECT txid_current() AS id").fetchone()
            assert first == again
    finally:
        pool.close()


def test_a_connection_the_server_dropped_is_replaced_before_the_caller_sees_it(infra: Infra) -> None:
    pool = make_pool(infra.database_url, name="pool-dead", min_size=1, max_size=1, app_role=None)
    pool.open(wait=True)
    try:
        with pool.connection() as conn:
            dead_pid = conn.info.backend_pid
        with connect(infra.database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
        with pool.connection(timeout=10.0) as conn:
            row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        assert row is not None and row["pid"] != dead_pid
    finally:
        pool.close()
