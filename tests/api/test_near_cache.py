"""The near cache (api/near_cache.py): per-process copies of catalogue entries, dropped when any
process writes; and the rate-limit leases that let a cached read skip Redis altogether.

Two real API processes share the test session's PostgreSQL and Redis, as two processes behind
nginx would.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.near_cache import CHANNEL, NearCache, NearEntry, run_listener
from api.warm import GENERATION_KEY, WARM_MARK
from devstack import embedded
from tests.api.support import clear_of_window_edge, redis_commands
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import Process, http_json, wait_for

HITS = "dms:{api}:cache:hits"


@pytest.fixture
def two_apis(infra: Infra, own_redis: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two `python -m api` processes on a Redis of their own (the tests count its commands), with
    limits high enough that a lease lasts the whole test."""
    urls, processes = [], []
    try:
        for n in range(2):
            port = embedded.free_port()
            env = infra.env(API_PORT=str(port), REDIS_URL=own_redis, RATE_LIMIT_IP="1000000/minute",
                            RATE_LIMIT_USER="1000000/hour", LOG_LEVEL="WARNING")
            process = Process("api", env, tmp_path / f"api-{n}.log")
            processes.append(process)
            process.wait_http_ok(f"http://127.0.0.1:{port}/health")
            urls.append(f"http://127.0.0.1:{port}")
        # A process uses its near cache only once its listener is subscribed.
        store = redis.Redis.from_url(own_redis, decode_responses=True)
        wait_for(lambda: dict(store.pubsub_numsub(CHANNEL)).get(CHANNEL) == 2, timeout_s=10,
                 message="both processes following the change channel")
        store.close()
        yield urls
    finally:
        for process in processes:
            process.stop()


def test_a_repeated_cached_read_needs_no_redis_round_trip(two_apis: list[str], world: World, own_redis: str) -> None:
    url = f"{two_apis[1]}/api/products?limit=5&category=near-{uuid.uuid4().hex[:6]}"
    clear_of_window_edge(60, margin_s=8)  # a new window would take a new lease (one script call)
    first, _, _ = http_json("GET", url, token=world.restaurant)  # loads, takes the leases, keeps a copy
    assert first == 200
    store = redis.Redis.from_url(own_redis, decode_responses=True)
    # The processes warm the catalogue when they start (api/warm.py); let that finish first.
    wait_for(lambda: store.get(WARM_MARK) == (store.get(GENERATION_KEY) or "0"), timeout_s=10,
             message="the catalogue warmed")
    with redis_commands(store) as used:
        answers = [http_json("GET", url, token=world.restaurant) for _ in range(20)]
    assert all(status == 200 and headers["X-Cache"] == "HIT" for status, headers, _ in answers)
    assert int(answers[-1][1]["X-RateLimit-Remaining"]) == 1_000_000 - 21  # counted exactly, from the lease
    # Nothing per request (a round trip each would be 20 script calls or more). What may show:
    # the listener adding up near hits once a second, the warmers' 5-second check (one MGET each).
    per_request = sum(n for name, n in used.items() if name in ("evalsha", "eval", "get", "incr", "set"))
    assert per_request == 0 and used.get("incrby", 0) <= 4, used
    assert set(used) <= {"incrby", "mget", "scan"}, used  # scan: the minute sampler, should it run


def test_a_write_on_one_process_is_seen_at_once_on_the_other(two_apis: list[str], world: World) -> None:
    writer, reader = two_apis
    product = world.products[0]
    one = f"{reader}/api/products/{product['id']}"
    assert http_json("GET", one, token=world.restaurant)[0] == 200
    assert http_json("GET", one, token=world.restaurant)[1]["X-Cache"] == "HIT"  # the reader holds a copy
    renamed = f"renamed {uuid.uuid4().hex[:8]}"
    status, _, _ = http_json("PATCH", f"{writer}/api/products/{product['id']}", {"name": renamed}, token=world.admin)
    assert status == 200
    # The change message reaches the reader within milliseconds; 2 s is the deadline (a loaded
    # machine), well inside the 10 s a copy would live without the message.
    wait_for(lambda: http_json("GET", one, token=world.restaurant)[2]["name"] == renamed, timeout_s=2.0,
             message="the other process to drop its copy")


def test_the_performance_figures_count_near_hits(two_apis: list[str], world: World) -> None:
    api = two_apis[0]
    url = f"{api}/api/products?limit=3&category=count-{uuid.uuid4().hex[:6]}"
    http_json("GET", url, token=world.restaurant)
    before = http_json("GET", f"{api}/api/performance/cache", token=world.admin)[2]
    for _ in range(5):
        http_json("GET", url, token=world.restaurant)
    after = http_json("GET", f"{api}/api/performance/cache", token=world.admin)[2]
    assert after["hits"] - before["hits"] >= 5  # the process adds its pending near hits before answering


# -- the listener and the cache on their own -------------------------------------------------------
def test_a_copy_read_before_an_invalidation_is_not_kept() -> None:
    near = NearCache()
    near.listening = True
    epoch = near.epoch("products")  # a reader starts its Redis read...
    near.invalidate("products")  # ...a write lands meanwhile...
    near.put("products", "k", NearEntry("old", "e"), epoch=epoch)  # ...and the old text arrives
    assert near.get("products", "k") is None
    near.put("products", "k", NearEntry("new", "e"), epoch=near.epoch("products"))
    assert near.get("products", "k") == NearEntry("new", "e")
    near.invalidate("orders")  # another namespace leaves it alone
    assert near.get("products", "k") is not None


def test_copies_expire_and_are_unused_while_not_listening() -> None:
    now = [0.0]
    near = NearCache(ttl_s=5.0, clock=lambda: now[0])
    near.listening = True
    near.put("products", "k", NearEntry("text", "e"), epoch=near.epoch("products"))
    near.listening = False
    assert near.get("products", "k") is None and not near.peek("products", "k")
    near.listening = True
    assert near.peek("products", "k")
    now[0] = 5.1
    assert near.get("products", "k") is None


@pytest.mark.servers
def test_the_listener_follows_changes_and_turns_the_cache_off_when_redis_goes(tmp_path: Path) -> None:
    server = embedded.start_redis(tmp_path / "redis", port=embedded.free_port(), persist=False)
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=2)
    near = NearCache()
    stop = threading.Event()
    listener = threading.Thread(target=run_listener, args=(near, client, HITS),
                                kwargs={"flush_every_s": 0.05, "retry_s": 0.1, "stopped": stop.is_set}, daemon=True)
    try:
        listener.start()
        wait_for(lambda: near.listening, timeout_s=5, message="the listener to subscribe")
        near.put("products", "k", NearEntry("text", "e"), epoch=near.epoch("products"))
        near.get("products", "k")
        wait_for(lambda: client.get(HITS) == "1", timeout_s=5, message="the near hit to reach Redis")
        client.publish(CHANNEL, "products")
        wait_for(lambda: not near.peek("products", "k"), timeout_s=5, message="the copy to be dropped")
        near.put("products", "k", NearEntry("text", "e"), epoch=near.epoch("products"))
        server.stop(timeout_s=10)
        wait_for(lambda: not near.listening, timeout_s=10, message="the listener to notice Redis is gone")
        assert near.get("products", "k") is None  # whatever it held is forgotten, not served
    finally:
        stop.set()
        listener.join(timeout=10)
        client.close()
        server.stop(timeout_s=10)
    assert not listener.is_alive()
