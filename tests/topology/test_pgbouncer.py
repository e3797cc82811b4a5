"""Many API clients through PgBouncer in transaction mode share at most 20 PostgreSQL connections."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common.auth import mint_token
from common.db import connect
from common.migrations import migrate
from devstack import embedded, pgbouncer
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import http_json

pytestmark = pytest.mark.needs_system("pgbouncer")
DATABASE = "dms_bouncer"


@pytest.fixture
def bouncer(infra: Infra, tmp_path: Path) -> Iterator[int]:
    direct = embedded.create_database(infra.postgres.port, DATABASE)
    migrate(direct)
    port = embedded.free_port()
    # No reserve pool here, so the bound under test is exactly default_pool_size.
    server = pgbouncer.start(tmp_path / "pgbouncer", database=DATABASE, pg_port=infra.postgres.port,
                             listen_port=port, overrides={"reserve_pool_size": "0"})
    yield port
    server.stop(sig=signal.SIGINT, timeout_s=10)


def test_200_concurrent_clients_use_at_most_20_server_connections(infra: Infra, bouncer: int,
                                                                  start_api: Any) -> None:
    with connect(f"postgresql://postgres@127.0.0.1:{infra.postgres.port}/{DATABASE}") as conn:
        restaurant = conn.execute("INSERT INTO restaurants (name) VALUES ('bouncer') RETURNING id").fetchone()
        product = conn.execute("INSERT INTO products (name, category, price) VALUES ('p', 'produce', '1.50')"
                               " RETURNING id").fetchone()
        conn.commit()
    assert restaurant and product
    through = f"postgresql://postgres@127.0.0.1:{bouncer}/{DATABASE}"
    apis = [start_api(name=f"bouncer{n}", DATABASE_URL=through)[1] for n in range(3)]  # 3 x pool of 20
    token = mint_token(JWT_SECRET, role="restaurant", restaurant_id=str(restaurant["id"]))

    peak = {"server": 0, "clients": 0}
    sampling = threading.Event()

    def sample() -> None:
        admin = f"postgresql://postgres@127.0.0.1:{infra.postgres.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn, \
                psycopg.connect(f"postgresql://postgres@127.0.0.1:{bouncer}/pgbouncer", autocommit=True,
                                cursor_factory=psycopg.ClientCursor) as console:
            while not sampling.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                   " AND backend_type = 'client backend'", (DATABASE,)).fetchone()
                peak["server"] = max(peak["server"], row[0] if row else 0)
                cursor = console.execute("SHOW POOLS")  # the admin console speaks the simple protocol only
                columns = [c.name for c in cursor.description or []]
                pools = [dict(zip(columns, p, strict=True)) for p in cursor.fetchall()]
                clients = sum(p["cl_active"] + p["cl_waiting"] for p in pools if p["database"] == DATABASE)
                peak["clients"] = max(peak["clients"], clients)
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    retried: list[int] = []  # 503s answered while every pooled connection was busy, then retried

    def client(n: int) -> list[int]:
        """A well-behaved client: a 503 (the API waited its pool timeout for a connection, which a
        loaded machine reaches sooner) is retried with backoff, a POST with the same Idempotency-Key."""
        base = apis[n % len(apis)]
        statuses = []
        for step in range(4):
            key = str(uuid.uuid4())
            for attempt in range(1, 11):
                if step % 2 == 0:
                    status, _, _ = http_json("POST", f"{base}/api/orders",
                                             {"items": [{"product_id": str(product["id"]), "quantity": 1}]},
                                             token=token, headers={"Idempotency-Key": key}, timeout_s=30)
                else:
                    status, _, _ = http_json("GET", f"{base}/api/orders?limit=20", token=token, timeout_s=30)
                if status != 503:
                    break
                retried.append(status)
                time.sleep(0.2 * attempt)
            statuses.append(status)
        return statuses

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = [status for statuses in pool.map(client, range(200)) for status in statuses]
    took = time.monotonic() - started
    sampling.set()
    sampler.join(timeout=5)
    errors = [status for status in results if status not in (200, 201)]
    print(f"\nPgBouncer: 200 HTTP clients, {len(results)} requests in {took:.1f}s, up to {peak['clients']} "
          f"pooled client connections on {peak['server']} PostgreSQL connections "
          f"(ratio {peak['clients'] / max(peak['server'], 1):.1f}:1), {len(retried)} retried after a 503, "
          f"errors {len(errors)}")
    assert errors == []
    assert 0 < peak["server"] <= 20
