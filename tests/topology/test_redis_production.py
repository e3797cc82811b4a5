"""deploy/redis/redis.conf as written: the API and a gateway work under its ACL, nothing is evicted."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from common.db import connect
from common.events import RELAY_WATERMARK_KEY
from common.migrations import migrate
from devstack import embedded
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import ROOT, WsClient, http_json, wait_for

CONF = ROOT / "deploy" / "redis" / "redis.conf"
PASSWORD = "CHANGE-ME-long-random"  # the placeholder the file ships with


@pytest.fixture
def production_redis(tmp_path: Path) -> Iterator[str]:
    port = embedded.free_port()
    # The file as shipped; only where it listens differs on a test machine.
    process = subprocess.Popen([str(embedded.redis_server_binary()), str(CONF), "--bind", "127.0.0.1",
                                "--port", str(port), "--dir", str(tmp_path), "--maxmemory", "64mb"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = embedded.ServerProcess("redis", port, process.pid, process, tmp_path / "redis.log")
    embedded.wait_for_port(port, timeout_s=15, alive=server.alive, what="Redis with deploy/redis/redis.conf")
    yield f"redis://dms:{PASSWORD}@127.0.0.1:{port}/0"
    server.stop(sig=signal.SIGTERM)


def test_the_stack_runs_under_the_production_redis_settings(infra: Infra, world: World, production_redis: str,
                                                          start_api: Any, start_gateway: Any) -> None:
    client = redis.Redis.from_url(production_redis, decode_responses=True)
    with pytest.raises(redis.exceptions.NoPermissionError):  # the application user cannot reconfigure
        client.config_get("maxmemory-policy")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(production_redis.replace(PASSWORD, "wrong")).ping()
    info = client.info("memory")
    assert info["maxmemory_policy"] == "noeviction" and info["maxmemory"] == 64 * 1024 * 1024
    assert client.info("persistence")["aof_enabled"] == 0

    # A database of its own: in the shared one another test's gateway may lead the relay, and it
    # publishes to the test Redis, so this gateway's relay would stand by and never set the watermark.
    database_url = embedded.create_database(infra.postgres.port, f"redis_prod_{uuid.uuid4().hex[:8]}")
    migrate(database_url)
    with connect(database_url) as conn:
        conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'R')", (world.restaurant_id,))
        conn.execute("INSERT INTO products (id, name, category, price) VALUES (%s, 'P', 'produce', 1.25)",
                     (world.products[0]["id"],))
        conn.commit()
    _, api = start_api(REDIS_URL=production_redis, DATABASE_URL=database_url)
    _, gateway = start_gateway(base=infra.env(REDIS_URL=production_redis, DATABASE_URL=database_url))
    wait_for(lambda: client.get(RELAY_WATERMARK_KEY) is not None, message="the relay's watermark")
    watcher = WsClient.connect(gateway["url"], token=world.restaurant)
    assert watcher.recv()["type"] == "welcome"
    watcher.subscribe(f"restaurant:{world.restaurant_id}")
    status, _, order = http_json("POST", f"{api}/api/orders",
                                 {"items": [{"product_id": world.products[0]["id"], "quantity": 1}]},
                                 token=world.restaurant, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert status == 201, order
    (event,) = watcher.events(1, channel=f"restaurant:{world.restaurant_id}")
    assert order["id"] in str(event["data"])
    for _ in range(3):  # cached reads and rate-limit counters, all under the ACL
        assert http_json("GET", f"{api}/api/products", token=world.restaurant)[0] == 200
    watcher.close()
    # Nothing failed open: every Redis command the API sent was allowed.
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        scrape = response.read().decode()
    fail_open = [line for line in scrape.splitlines() if line.startswith("dms_api_redis_fail_open_total{")]
    assert all(line.endswith(" 0.0") for line in fail_open), fail_open
    keys = set(client.scan_iter("dms:*"))
    assert any(key.startswith("dms:{api}:rl:") for key in keys)
    assert any(key.startswith("dms:{api}:cache:") for key in keys)
