"""Demo data: restaurants, users of every role, 1,000 products, and optional order history."""

from __future__ import annotations

import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from common.db import connect

_NAMESPACE = uuid.UUID("6f1c1d2e-7d0b-4c4e-9a55-0d3e5c1f2a10")
CATEGORIES = ("produce", "dairy", "meat", "seafood", "bakery", "dry-goods", "beverages", "frozen", "cleaning",
              "packaging")
ADJECTIVES = ("fresh", "organic", "premium", "local", "bulk", "smoked", "aged", "wild", "classic", "spicy")
NOUNS = ("tomatoes", "basil", "mozzarella", "flour", "olive oil", "salmon", "chicken thighs", "lemons", "rice",
         "espresso beans", "butter", "napkins", "cream", "garlic", "potatoes", "shrimp", "baguettes", "yogurt")


def demo_id(name: str) -> str:
    """Stable ids, so seeding twice changes nothing and demo tokens survive restarts."""
    return str(uuid.uuid5(_NAMESPACE, name))


@dataclass(frozen=True)
class DemoIdentities:
    admin: str = demo_id("user:admin")
    restaurant_user: str = demo_id("user:restaurant")
    driver: str = demo_id("user:driver")
    demo_user: str = demo_id("user:demo")
    restaurant: str = demo_id("restaurant:0")


DEMO = DemoIdentities()
RESTAURANTS = [(demo_id(f"restaurant:{n}"), name, address) for n, (name, address) in enumerate([
    ("Trattoria Centrale", "1 Market Street"), ("Sushi Corner", "22 Harbour Road"),
    ("Green Bowl", "5 Park Avenue"), ("Le Petit Bistro", "9 Rue Verte"), ("Taco Norte", "77 Sunset Blvd"),
])]


def seed_demo(url: str, *, products: int = 1000) -> dict[str, int]:
    """Idempotent: every insert is ON CONFLICT DO NOTHING on a stable id."""
    rng = random.Random(42)
    with connect(url) as conn, conn.transaction():
        for rid, name, address in RESTAURANTS:
            conn.execute("INSERT INTO restaurants (id, name, address) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                         (rid, name, address))
        users = [
            (DEMO.admin, "admin", "Ada Admin", None),
            (DEMO.restaurant_user, "restaurant", "Rita Restaurant", DEMO.restaurant),
            (DEMO.driver, "driver", "Dan Driver", None),
            (DEMO.demo_user, "demo", "Demo Viewer", DEMO.restaurant),
        ] + [(demo_id(f"user:driver:{n}"), "driver", f"Driver {n}", None) for n in range(1, 10)]
        for uid, role, display_name, restaurant_id in users:
            conn.execute(
                "INSERT INTO profiles (id, role, display_name, restaurant_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (uid, role, display_name, restaurant_id),
            )
            if role == "driver":
                conn.execute("INSERT INTO drivers (id) VALUES (%s) ON CONFLICT DO NOTHING", (uid,))
        rows = []
        for n in range(products):
            name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} #{n}"
            price = Decimal(rng.randint(50, 20000)) / 100
            rows.append((demo_id(f"product:{n}"), name, f"Demo product {n}: {name}", CATEGORIES[n % len(CATEGORIES)],
                         rng.choice(("each", "kg", "case", "litre")), price, n % 25 != 0))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO products (id, name, description, category, unit, price, active)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )
    return {"restaurants": len(RESTAURANTS), "users": len(users), "products": products}


def seed_orders(url: str, count: int, *, batch: int = 5000, progress: bool = True) -> int:
    """Generate `count` historical orders with items using COPY, showing progress on stderr."""
    rng = random.Random(7)
    with connect(url) as conn:
        products = conn.execute("SELECT id, name, price FROM products WHERE active").fetchall()
        drivers = [row["id"] for row in conn.execute("SELECT id FROM drivers").fetchall()]
        if not products:
            raise RuntimeError("seed the catalogue first (dms seed)")
        creators = {rid: DEMO.restaurant_user if rid == DEMO.restaurant else DEMO.admin for rid, _, _ in RESTAURANTS}
        started = time.monotonic()
        now = datetime.now(UTC)
        done = 0
        while done < count:
            size = min(batch, count - done)
            _copy_orders(conn, rng, size, products, drivers, creators, now)
            conn.commit()
            done += size
            if progress:
                rate = done / max(time.monotonic() - started, 1e-6)
                bar = "#" * int(30 * done / count)
                print(f"\rorders [{bar:<30}] {done}/{count} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        conn.execute("ANALYZE orders")
        conn.execute("ANALYZE order_items")
        conn.commit()
    return done


def _copy_orders(conn: psycopg.Connection[Any], rng: random.Random, size: int, products: list[dict[str, Any]],
                 drivers: list[Any], creators: dict[str, str], now: datetime) -> None:
    statuses = ("delivered",) * 8 + ("cancelled", "pending", "confirmed", "preparing", "ready", "delivering")
    with conn.cursor() as cur:
        with cur.copy("COPY orders (id, restaurant_id, created_by, driver_id, status, total_amount, customer_name,"
                      " version, created_at, updated_at, confirmed_at, delivered_at) FROM STDIN") as order_copy:
            items: list[tuple[Any, ...]] = []
            for _ in range(size):
                order_id = uuid.uuid4()
                restaurant_id = rng.choice(RESTAURANTS)[0]
                status = rng.choice(statuses)
                created = now - timedelta(seconds=rng.randint(60, 180 * 86400))
                total = Decimal("0.00")
                for line_no in range(1, rng.randint(1, 6) + 1):
                    product = rng.choice(products)
                    quantity = rng.randint(1, 20)
                    line_total = product["price"] * quantity
                    total += line_total
                    items.append((order_id, line_no, product["id"], product["name"], quantity, product["price"],
                                  line_total))
                driver = rng.choice(drivers) if status in ("delivering", "delivered") and drivers else None
                # Past pending, an order was confirmed minutes later; a delivered one arrived within the hour or two.
                confirmed = created + timedelta(minutes=rng.randint(1, 10)) if status not in ("pending", "cancelled") \
                    else None
                delivered = confirmed + timedelta(minutes=rng.randint(15, 90)) \
                    if status == "delivered" and confirmed else None
                order_copy.write_row((order_id, restaurant_id, creators[restaurant_id], driver, status, total,
                                      f"Customer {rng.randint(1, 5000)}", 1, created, delivered or created, confirmed,
                                      delivered))
        with cur.copy("COPY order_items (order_id, line_no, product_id, name, quantity, unit_price, line_total)"
                      " FROM STDIN") as item_copy:
            for item in items:
                item_copy.write_row(item)
