"""Analytics and export on 100,000 seeded orders: index-only plans, and an export in constant memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.app import create_app
from api.routes.analytics import GROUPS, PLANNER_SETTINGS, analytics_sql
from bench.dispatch import vacuum_settled
from common.auth import mint_token
from common.config import Config
from common.db import connect
from common.migrations import migrate
from devstack import embedded
from devstack.seed import DEMO, seed_demo, seed_orders
from tests.api.support import auth
from tests.fix_infra import JWT_SECRET, Infra

ORDERS = 100_000


@pytest.fixture(scope="module")
def scale_db(infra: Infra) -> str:
    """Its own database, so the 100,000 orders do not show up in other tests' numbers."""
    url = embedded.create_database(infra.postgres.port, "dms_dispatch_scale")
    migrate(url)
    seed_demo(url)
    with connect(url) as conn:
        have = conn.execute("SELECT count(*) AS n FROM orders").fetchone()
    if have is None or have["n"] < ORDERS:
        seed_orders(url, ORDERS, progress=False)
    # The visibility map lets the planner trust index-only scans, as it does on a table autovacuum keeps.
    assert vacuum_settled(url) >= 0.95
    return url


def _plan(url: str, sql: str, params: dict[str, Any], *, restaurant: str | None = None) -> str:
    """EXPLAIN the query the way the API runs it: as dms_staff for admins, as dms_app under row security."""
    with connect(url) as conn:
        if restaurant is None:
            conn.execute("SELECT set_config('role', 'dms_staff', true), set_config('dms.role', 'admin', true)")
        else:
            conn.execute("SELECT set_config('role', 'dms_app', true), set_config('dms.role', 'restaurant', true),"
                         " set_config('dms.restaurant_id', %s, true)", (restaurant,))
        conn.execute(PLANNER_SETTINGS)
        row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
        conn.rollback()
    assert row is not None
    return json.dumps(row["QUERY PLAN"])


@pytest.mark.parametrize("days", [7, 90, 366])
@pytest.mark.parametrize("group_by", list(GROUPS))
def test_analytics_is_an_index_scan_for_admins(scale_db: str, group_by: str, days: int) -> None:
    end = datetime.now(UTC)
    plan = _plan(scale_db, analytics_sql(group_by, scoped=False), {"start": end - timedelta(days=days), "end": end,
                                                                    "restaurant_id": None})
    # Either covering index (with six restaurants PostgreSQL 18 may skip-scan the per-restaurant one).
    assert "Seq Scan" not in plan and "Index Only Scan" in plan and "created_analytics" in plan, plan


@pytest.mark.parametrize("days", [7, 90, 366])
@pytest.mark.parametrize("group_by", list(GROUPS))
def test_analytics_is_an_index_scan_for_a_restaurant(scale_db: str, group_by: str, days: int) -> None:
    end = datetime.now(UTC)
    plan = _plan(scale_db, analytics_sql(group_by, scoped=True),
                 {"start": end - timedelta(days=days), "end": end, "restaurant_id": DEMO.restaurant},
                 restaurant=DEMO.restaurant)
    assert "Seq Scan" not in plan and "Index Only Scan" in plan and "orders_restaurant_created_analytics" in plan, plan


@pytest.fixture(scope="module")
def scale_app(infra: Infra, scale_db: str) -> Iterator[Any]:
    config = Config.from_env(infra.env(DATABASE_URL=scale_db, RATE_LIMIT_IP="1000000/minute",
                                       RATE_LIMIT_USER="1000000/hour"))
    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.extensions["dms"].close()


def _stream(app: Any, query: str) -> tuple[int, int, int]:
    """Read the export chunk by chunk, dropping each; return (bytes, rows, peak bytes allocated meanwhile)."""
    client = app.test_client()
    token = mint_token(JWT_SECRET, role="admin")
    tracemalloc.start()
    try:
        response = client.get(f"/api/orders/export.csv{query}", headers=auth(token), buffered=False)
        assert response.status_code == 200
        size = rows = 0
        tracemalloc.reset_peak()
        for chunk in response.response:
            size += len(chunk)
            rows += chunk.count(b"\n")
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return size, rows, peak


def test_the_export_of_100000_orders_runs_in_constant_memory(scale_app: Any) -> None:
    _, small_rows, small_peak = _stream(scale_app, f"?created_from={_days_ago(10)}")
    size, rows, peak = _stream(scale_app, "")
    print(f"export: {rows - 1} rows, {size / 1e6:.1f} MB, peak {peak / 1e6:.2f} MB traced "
          f"(10 days: {small_rows - 1} rows, peak {small_peak / 1e6:.2f} MB)")
    assert rows - 1 >= ORDERS and small_rows < rows / 5
    # Buffering the body (or fetching every row at once) would need at least the body's size.
    assert peak < size / 4, (peak, size)
    # Ten times the rows, about the same memory: bounded by one page, not by the export.
    assert peak < small_peak * 2 + 1_000_000, (peak, small_peak)


def _days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).date().isoformat()
