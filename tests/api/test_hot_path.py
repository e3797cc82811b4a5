"""The API's hot path: ETag/304 on the catalogue, cache warming, one Redis script per rate-limit check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api.app import create_app
from api.warm import WARM_MARK, warm_if_needed
from common.config import Config
from devstack import embedded
from tests.api.support import auth, clear_of_window_edge, redis_commands
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import Process, http_json, wait_for


@pytest.fixture
def app(infra: Infra) -> Iterator[Any]:
    built = create_app(Config.from_env(infra.env()))
    yield built
    built.extensions["dms"].close()


def _client(app: Any) -> Any:
    client = app.test_client()
    # Its own address: rate-limit counters live in the session's Redis, shared with other tests.
    client.environ_base["REMOTE_ADDR"] = f"198.18.{uuid.uuid4().int % 250 + 1}.{uuid.uuid4().int % 250 + 1}"
    return client


def _catalogue_keys(client: redis.Redis) -> list[str]:
    return [key for key in client.scan_iter("dms:{api}:cache:products:*")]


def test_catalogue_reads_carry_an_etag_and_answer_304_until_the_list_changes(client: Any, world: World) -> None:
    category = f"etag-{uuid.uuid4().hex[:8]}"
    created = client.post("/api/products", json={"name": "Basil", "category": category, "price": "2.00"},
                          headers=auth(world.admin)).get_json()
    url = f"/api/products?category={category}"
    first = client.get(url, headers=auth(world.restaurant))
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    etag = first.headers["ETag"]
    assert etag and "stale-while-revalidate=" in first.headers["Cache-Control"]
    assert [item["id"] for item in first.get_json()["items"]] == [created["id"]]

    hit = client.get(url, headers=auth(world.restaurant))
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    assert hit.headers["ETag"] == etag and hit.get_json() == first.get_json()

    unchanged = client.get(url, headers=auth(world.restaurant, **{"If-None-Match": etag}))
    assert unchanged.status_code == 304 and unchanged.data == b""
    assert unchanged.headers["ETag"] == etag and "stale-while-revalidate=" in unchanged.headers["Cache-Control"]

    other = client.get(url, headers=auth(world.restaurant, **{"If-None-Match": '"something-else"'}))
    assert other.status_code == 200 and other.get_json() == first.get_json()

    patched = client.patch(f"/api/products/{created['id']}", json={"price": "2.50"}, headers=auth(world.admin))
    assert patched.status_code == 200
    changed = client.get(url, headers=auth(world.restaurant, **{"If-None-Match": etag}))
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.get_json()["items"][0]["price"] == "2.50"


def test_a_single_product_has_an_etag_too_and_unknown_ids_stay_404(client: Any, world: World) -> None:
    product_id = world.products[0]["id"]
    first = client.get(f"/api/products/{product_id}", headers=auth(world.driver))
    assert first.status_code == 200 and first.get_json()["id"] == product_id
    again = client.get(f"/api/products/{product_id}", headers=auth(world.driver, **{"If-None-Match":
                                                                                      first.headers["ETag"]}))
    assert again.status_code == 304
    missing = client.get(f"/api/products/{uuid.uuid4()}", headers=auth(world.driver))
    assert missing.status_code == 404 and "ETag" not in missing.headers


def test_warming_fills_the_common_lists_and_runs_again_when_redis_lost_them(app: Any, infra: Infra,
                                                                             world: World) -> None:
    store = redis.Redis.from_url(infra.redis_url, decode_responses=True)
    store.delete(WARM_MARK, *_catalogue_keys(store))
    assert warm_if_needed(app) is True
    assert warm_if_needed(app) is False  # this generation is warm already
    first = _client(app).get("/api/products", headers=auth(world.restaurant))
    assert first.status_code == 200 and first.headers["X-Cache"] == "HIT"
    category = _client(app).get(f"/api/products/{world.products[0]['id']}",
                                headers=auth(world.restaurant)).get_json()["category"]
    by_category = _client(app).get(f"/api/products?category={category}", headers=auth(world.restaurant))
    assert by_category.headers["X-Cache"] == "HIT"

    store.delete(WARM_MARK, *_catalogue_keys(store))  # what a Redis restart leaves
    assert warm_if_needed(app) is True
    assert _client(app).get("/api/products", headers=auth(world.driver)).headers["X-Cache"] == "HIT"

    # A catalogue write moves the generation: the new one is warmed as well.
    assert _client(app).patch(f"/api/products/{world.products[0]['id']}", json={"unit": "kg"},
                              headers=auth(world.admin)).status_code == 200
    assert warm_if_needed(app) is True
    assert _client(app).get("/api/products", headers=auth(world.driver)).headers["X-Cache"] == "HIT"


def test_a_running_api_warms_at_start_and_after_redis_comes_back_empty(infra: Infra, world: World,
                                                                      tmp_path: Path) -> None:
    port = embedded.free_port()
    process = Process("api", infra.env(API_PORT=str(port)), tmp_path / "api.log")
    try:
        process.wait_http_ok(f"http://127.0.0.1:{port}/health")
        store = redis.Redis.from_url(infra.redis_url, decode_responses=True)
        wait_for(lambda: store.get(WARM_MARK) is not None, timeout_s=20, message="warmed at start")
        store.flushdb()  # what a Redis restarted without persistence holds
        assert store.get(WARM_MARK) is None
        wait_for(lambda: store.get(WARM_MARK) is not None, timeout_s=30, interval_s=0.2,
                 message="warmed again after Redis came back empty")
        status, headers, _ = http_json("GET", f"http://127.0.0.1:{port}/api/products", token=world.restaurant)
        assert status == 200 and headers["X-Cache"] == "HIT"
    finally:
        process.stop()


def _limited_app(infra: Infra, own_redis: str, *, ip: str, user: str) -> Any:
    """An app with these limits on a Redis of this test alone (the tests count its commands)."""
    return create_app(Config.from_env(infra.env(REDIS_URL=own_redis, RATE_LIMIT_IP=ip, RATE_LIMIT_USER=user)))


def test_both_rate_limits_cost_one_redis_command_and_still_expire(infra: Infra, world: World, own_redis: str) -> None:
    app = _limited_app(infra, own_redis, ip="50/minute", user="70/hour")
    try:
        client = _client(app)
        client.get("/api/openapi.json", headers=auth(world.restaurant))  # the script is loaded once
        store = redis.Redis.from_url(own_redis, decode_responses=True)
        with redis_commands(store) as used:
            response = client.get("/api/openapi.json", headers=auth(world.restaurant))
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "50"
        # One round trip (the script); Redis counts the two INCRBYs it ran inside; no MULTI/EXEC/EXPIRE.
        # (Limits under 100 lease one request at a time, so every request goes to Redis here.)
        assert used == {"evalsha": 1, "incrby": 2}, used
        keys = list(store.scan_iter("dms:{api}:rl:*"))
        assert any(key.startswith("dms:{api}:rl:ip:") for key in keys) and any(key.startswith("dms:{api}:rl:user:")
                                                                         for key in keys)
        assert all(0 < store.ttl(key) <= 3601 for key in keys)
    finally:
        app.extensions["dms"].close()


def test_the_user_limit_still_refuses_after_one_script_counts_both(infra: Infra, world: World) -> None:
    app = create_app(Config.from_env(infra.env(RATE_LIMIT_IP="1000/minute", RATE_LIMIT_USER="3/hour")))
    try:
        token = world.token("driver")
        statuses = [_client(app).get("/api/openapi.json", headers=auth(token)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        app.extensions["dms"].close()


def test_the_created_order_reply_and_event_match_what_was_stored(client: Any, world: World, infra: Infra) -> None:
    """The reply and the event are built before the writes; they must equal what the database holds."""
    from common.db import connect

    body = {"items": [{"product_id": world.products[0]["id"], "quantity": 3},
                      {"product_id": world.products[1]["id"], "quantity": 1}],
            "notes": "ring twice", "customer_name": "Zoë"}
    created = client.post("/api/orders", json=body, headers=auth(world.restaurant,
                                                                 **{"Idempotency-Key": uuid.uuid4().hex}))
    assert created.status_code == 201
    reply = created.get_json()
    stored = client.get(f"/api/orders/{reply['id']}", headers=auth(world.restaurant))
    assert stored.status_code == 200 and stored.headers["X-Cache"] == "MISS"
    assert stored.get_json() == reply
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT channels, data FROM events WHERE event = 'order.created'"
                           " AND data->>'order_id' = %s", (reply["id"],)).fetchone()
    assert row is not None
    assert row["data"]["updated_at"] == reply["updated_at"] and row["data"]["total_amount"] == reply["total_amount"]
    assert row["data"]["version"] == 1 and row["data"]["status"] == "pending"
    assert row["data"]["request_id"] == created.headers["X-Request-ID"]
    assert set(row["channels"]) == {"orders", f"restaurant:{world.restaurant_id}", f"order:{reply['id']}"}


def test_an_expired_idempotency_key_starts_afresh(client: Any, world: World, infra: Infra) -> None:
    from common.auth import verify_token
    from common.db import connect
    from tests.fix_infra import JWT_SECRET

    key = f"old-{uuid.uuid4()}"
    user_id = verify_token(world.restaurant, JWT_SECRET).user_id
    with connect(infra.database_url) as conn:
        conn.execute("INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response, created_at)"
                     " VALUES (%s, %s, 'another body', 201, '{}', now() - interval '25 hours')", (user_id, key))
        conn.commit()
    body = {"items": [{"product_id": world.products[0]["id"], "quantity": 1}]}
    first = client.post("/api/orders", json=body, headers=auth(world.restaurant, **{"Idempotency-Key": key}))
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = client.post("/api/orders", json=body, headers=auth(world.restaurant, **{"Idempotency-Key": key}))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    other = client.post("/api/orders", json={"items": [{"product_id": world.products[0]["id"], "quantity": 2}]},
                        headers=auth(world.restaurant, **{"Idempotency-Key": key}))
    assert other.status_code == 409


def test_a_cached_catalogue_read_is_one_redis_round_trip(infra: Infra, world: World, own_redis: str) -> None:
    """The rate limiter's script reads the cache entry too; the view then needs no Redis at all."""
    app = _limited_app(infra, own_redis, ip="50/minute", user="70/hour")
    try:
        client = _client(app)
        url = f"/api/products?limit=7&category=prefetch-{uuid.uuid4().hex[:6]}"
        clear_of_window_edge()
        assert client.get(url, headers=auth(world.restaurant)).headers["X-Cache"] == "MISS"
        store = redis.Redis.from_url(own_redis, decode_responses=True)
        with redis_commands(store) as used:
            response = client.get(url, headers=auth(world.restaurant))
        assert response.status_code == 200 and response.headers["X-Cache"] == "HIT"
        assert response.headers["X-RateLimit-Remaining"] == "48"
        # One EVALSHA; inside it: two counters, the generation and the entry, the hits counter.
        assert used == {"evalsha": 1, "incrby": 2, "incr": 1, "get": 2}, used
        # An invalid query is not prefetched and is still refused by the view.
        bad = client.get("/api/products?limit=0", headers=auth(world.restaurant))
        assert bad.status_code == 422
    finally:
        app.extensions["dms"].close()


def test_a_refused_request_reads_no_cache_entry(infra: Infra, world: World, own_redis: str) -> None:
    app = _limited_app(infra, own_redis, ip="2/minute", user="1000/hour")
    try:
        client = _client(app)
        url = f"/api/products?limit=3&category=refused-{uuid.uuid4().hex[:6]}"
        clear_of_window_edge()
        assert [client.get(url, headers=auth(world.restaurant)).status_code for _ in range(2)] == [200, 200]
        store = redis.Redis.from_url(own_redis, decode_responses=True)
        with redis_commands(store) as used:
            refused = client.get(url, headers=auth(world.restaurant))
        assert refused.status_code == 429 and "ETag" not in refused.headers
        # The IP counter only: the user's limit (1000/hour) leased 20 requests on the first one.
        # No GET, no hit counted.
        assert used == {"evalsha": 1, "incrby": 1}, used
    finally:
        app.extensions["dms"].close()
