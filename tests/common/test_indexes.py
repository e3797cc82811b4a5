"""The board and catalogue queries use their indexes on a seeded database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.db import connect
from devstack.seed import DEMO, seed_demo, seed_orders
from tests.fix_infra import Infra


@pytest.fixture(scope="module")
def seeded(infra: Infra) -> str:
    seed_demo(infra.database_url)
    seed_orders(infra.database_url, 20_000, progress=False)
    return infra.database_url


def _plan(url: str, sql: str, params: tuple[Any, ...]) -> str:
    with connect(url) as conn:
        conn.execute("SET enable_seqscan = on")
        row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    return json.dumps(row["QUERY PLAN"])


def test_the_board_query_is_an_index_scan(seeded: str) -> None:
    plan = _plan(
        seeded,
        "SELECT id, status, total_amount, customer_name, created_at FROM orders"
        " WHERE restaurant_id = %s ORDER BY created_at DESC, id DESC LIMIT 50",
        (DEMO.restaurant,),
    )
    assert "orders_board_covering" in plan and "Seq Scan" not in plan


def test_active_orders_use_the_partial_index(seeded: str) -> None:
    plan = _plan(
        seeded,
        "SELECT id, created_at FROM orders WHERE restaurant_id = %s"
        " AND status IN ('pending', 'confirmed', 'preparing', 'ready', 'delivering')"
        " ORDER BY created_at DESC LIMIT 50",
        (DEMO.restaurant,),
    )
    assert "orders_active" in plan or "orders_restaurant_status_created" in plan
    assert "Seq Scan" not in plan


def test_the_catalogue_query_uses_its_index(seeded: str) -> None:
    plan = _plan(
        seeded,
        "SELECT id, name, price FROM products WHERE category = %s AND active ORDER BY created_at DESC LIMIT 50",
        ("dairy",),
    )
    assert "products_category_active_created" in plan


def test_product_search_uses_the_full_text_index(seeded: str) -> None:
    with connect(seeded) as conn:
        conn.execute("SET enable_seqscan = off")  # 1,000 rows: force the planner to show the index works
        row = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT id FROM products"
            " WHERE to_tsvector('simple', name || ' ' || description) @@ plainto_tsquery('simple', %s)",
            ("basil",),
        ).fetchone()
    assert row is not None and "products_search" in json.dumps(row["QUERY PLAN"])
