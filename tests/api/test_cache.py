"""The Redis cache: HIT/MISS, invalidation by generation, TTL, counters, stampede lock, Redis down."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.app import create_app
from api.cache import HITS_KEY, MISSES_KEY, Cache
from common.config import Config
from common.redis_client import make_redis
from devstack import embedded
from tests.api.support import auth, create_order
from tests.fix_infra import Infra
from tests.fix_world import World


@pytest.fixture
def rds(infra: Infra) -> Iterator[redis.Redis]:
    client = make_redis(infra.redis_url)
    yield client
    client.close()


def _counter(rds: redis.Redis, key: str) -> int:
    return int(rds.get(key) or 0)


def test_product_list_is_a_miss_then_a_hit_until_a_write(client: Any, world: World) -> None:
    category = f"cache-{uuid.uuid4().hex[:8]}"
    product = client.post("/api/products", json={"name": "Leeks", "category": category, "price": "2.00"},
                          headers=auth(world.admin)).get_json()
    url = f"/api/products?category={category}"
    first = client.get(url, headers=auth(world.restaurant))
    assert first.headers["X-Cache"] == "MISS"
    second = client.get(url, headers=auth(world.driver))
    assert second.headers["X-Cache"] == "HIT" and second.get_json() == first.get_json()

    patched = client.patch(f"/api/products/{product['id']}", json={"price": "2.25"}, headers=auth(world.admin))
    assert patched.status_code == 200
    after = client.get(url, headers=auth(world.restaurant))
    assert after.headers["X-Cache"] == "MISS"
    assert after.get_json()["items"][0]["price"] == "2.25"
    assert client.get(url, headers=auth(world.restaurant)).headers["X-Cache"] == "HIT"


def test_a_write_invalidates_lists_of_every_query(client: Any, world: World) -> None:
    tag = uuid.uuid4().hex[:8]
    product = client.post("/api/products", json={"name": f"Kale {tag}", "category": f"c-{tag}", "price": "1.00"},
                          headers=auth(world.admin)).get_json()
    urls = [f"/api/products?category=c-{tag}", f"/api/products?q={tag}", f"/api/products/{product['id']}"]
    for url in urls:
        client.get(url, headers=auth(world.admin))
        assert client.get(url, headers=auth(world.admin)).headers["X-Cache"] == "HIT"
    client.patch(f"/api/products/{product['id']}", json={"name": f"Curly kale {tag}"}, headers=auth(world.admin))
    for url in urls:
        response = client.get(url, headers=auth(world.admin))
        assert response.headers["X-Cache"] == "MISS", url
        body = response.get_json()
        names = [p["name"] for p in body["items"]] if "items" in body else [body["name"]]
        assert names == [f"Curly kale {tag}"]


def test_a_new_product_appears_in_cached_lists(client: Any, world: World) -> None:
    category = f"new-{uuid.uuid4().hex[:8]}"
    url = f"/api/products?category={category}"
    assert client.get(url, headers=auth(world.admin)).get_json()["items"] == []
    client.post("/api/products", json={"name": "Okra", "category": category, "price": "1.00"},
                headers=auth(world.admin))
    assert len(client.get(url, headers=auth(world.admin)).get_json()["items"]) == 1


def test_entries_live_about_an_hour_and_hits_and_misses_are_counted(client: Any, world: World,
                                                                     rds: redis.Redis) -> None:
    product_id = world.products[1]["id"]
    hits, misses = _counter(rds, HITS_KEY), _counter(rds, MISSES_KEY)
    client.patch(f"/api/products/{product_id}", json={"unit": "kg"}, headers=auth(world.admin))
    assert client.get(f"/api/products/{product_id}", headers=auth(world.admin)).headers["X-Cache"] == "MISS"
    assert client.get(f"/api/products/{product_id}", headers=auth(world.admin)).headers["X-Cache"] == "HIT"
    assert _counter(rds, HITS_KEY) >= hits + 1 and _counter(rds, MISSES_KEY) >= misses + 1
    (key,) = [k for k in rds.scan_iter(match=f"dms:{{api}}:cache:products:g*:one:{product_id}")
              if k.startswith(f"dms:{{api}}:cache:products:g{rds.get('dms:{api}:cache:gen:products')}:")]
    assert 3600 * 0.9 - 5 <= rds.ttl(key) <= 3600 * 1.1


def test_one_rebuild_under_a_stampede(rds: redis.Redis) -> None:
    cache = Cache(rds)
    calls: list[int] = []
    results: list[Any] = []
    start = threading.Barrier(12)

    def load() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.3)  # a slow query: the window in which a stampede would happen
        return {"answer": 42}

    def reader() -> None:
        start.wait()
        results.append(cache.get_or_load("stampede", uuid_key, load, ttl_s=60))

    uuid_key = uuid.uuid4().hex
    threads = [threading.Thread(target=reader) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 12 and all(r.value == {"answer": 42} for r in results)
    assert len(calls) == 1
    assert sum(1 for r in results if not r.hit) == 1


def test_waiters_fall_back_to_the_database_when_the_rebuild_stalls(rds: redis.Redis) -> None:
    cache = Cache(rds, wait_for_rebuild_s=0.3)
    key = uuid.uuid4().hex
    # Someone else holds the rebuild lock and never finishes.
    rds.set(f"dms:{{api}}:cache:stalled:g0:{key}:lock", "other", px=5000)
    started = time.monotonic()
    found = cache.get_or_load("stalled", key, lambda: {"from": "db"}, ttl_s=60)
    assert found.value == {"from": "db"} and not found.hit
    assert 0.25 <= time.monotonic() - started < 3


def test_single_orders_are_cached_and_kept_fresh_by_writes(client: Any, world: World) -> None:
    order = create_order(client, world.restaurant, world.products[0]["id"])
    url = f"/api/orders/{order['id']}"
    assert client.get(url, headers=auth(world.restaurant)).headers["X-Cache"] == "MISS"
    cached = client.get(url, headers=auth(world.restaurant))
    assert cached.headers["X-Cache"] == "HIT" and cached.get_json() == order
    # Visibility is checked against the cached order too.
    assert client.get(url, headers=auth(world.other_restaurant)).status_code == 404
    moved = client.post(f"{url}/status", json={"status": "confirmed"}, headers=auth(world.admin)).get_json()
    after = client.get(url, headers=auth(world.restaurant)).get_json()
    assert after["status"] == "confirmed" and after["version"] == moved["version"]
    assigned = client.post(f"{url}/assign", json={"driver_id": _driver(client, world)},
                           headers=auth(world.admin)).get_json()
    driver_view = client.get(url, headers=auth(world.driver))
    assert driver_view.status_code == 200 and driver_view.get_json()["driver_id"] == assigned["driver_id"]


def test_an_older_version_never_replaces_a_newer_cached_order(rds: redis.Redis) -> None:
    cache = Cache(rds)
    key = uuid.uuid4().hex
    cache.put_newer("orders", key, {"version": 3, "status": "ready"}, version=3, ttl_s=60)
    cache.put_newer("orders", key, {"version": 2, "status": "preparing"}, version=2, ttl_s=60)
    assert cache.get("orders", key) == {"version": 3, "status": "ready"}
    cache.put_newer("orders", key, {"version": 4, "status": "delivering"}, version=4, ttl_s=60)
    assert cache.get("orders", key)["status"] == "delivering"


def _driver(client: Any, world: World) -> str:
    client.get("/api/orders", headers=auth(world.driver))  # first request creates the driver profile
    return world.driver_id


def test_reads_and_writes_work_when_redis_is_down(infra: Infra, world: World) -> None:
    dead = f"redis://127.0.0.1:{embedded.free_port()}/0"
    app = create_app(Config.from_env(infra.env(REDIS_URL=dead)))
    try:
        client = app.test_client()
        listed = client.get("/api/products?limit=5", headers=auth(world.restaurant))
        assert listed.status_code == 200 and listed.headers["X-Cache"] == "MISS"
        one = client.get(f"/api/products/{world.products[0]['id']}", headers=auth(world.restaurant))
        assert one.status_code == 200 and one.headers["X-Cache"] == "MISS"
        patched = client.patch(f"/api/products/{world.products[0]['id']}", json={"description": "fresh"},
                               headers=auth(world.admin))
        assert patched.status_code == 200 and patched.get_json()["description"] == "fresh"
        order = create_order(client, world.restaurant, world.products[0]["id"])
        fetched = client.get(f"/api/orders/{order['id']}", headers=auth(world.restaurant))
        assert fetched.status_code == 200 and fetched.headers["X-Cache"] == "MISS"
        assert "X-RateLimit-Limit" not in listed.headers  # the limiter failed open
    finally:
        app.extensions["dms"].close()
