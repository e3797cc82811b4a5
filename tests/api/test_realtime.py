"""`GET /api/realtime/connections`: admin only, sums every live gateway, drops dead ones."""

from __future__ import annotations

import json
from typing import Any

import redis

from common.gateway_stats import KEY_PREFIX
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient, wait_for


def _instance(name: str, connections: int, by_role: dict[str, int]) -> dict[str, Any]:
    return {"id": name, "connections": connections, "by_role": by_role, "subscriptions": connections * 2,
            "messages_out_per_s": 1.5, "slow_consumer_disconnects": 0, "started_at": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-01T00:00:02Z"}


def test_only_admins_see_connection_counts(client: Any, world: World) -> None:
    for token in (world.restaurant, world.driver, world.demo):
        response = client.get("/api/realtime/connections", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
    assert client.get("/api/realtime/connections").status_code == 401


def test_counts_are_summed_over_instances_and_expire(client: Any, infra: Infra, world: World) -> None:
    r = redis.Redis.from_url(infra.redis_url)
    r.set(KEY_PREFIX + "test-a", json.dumps(_instance("test-a", 3, {"driver": 2, "admin": 1})), ex=60)
    r.set(KEY_PREFIX + "test-b", json.dumps(_instance("test-b", 2, {"driver": 1, "restaurant": 1})), px=600)
    headers = {"Authorization": f"Bearer {world.admin}"}
    body = client.get("/api/realtime/connections", headers=headers).get_json()
    ids = {i["id"] for i in body["instances"]}
    assert {"test-a", "test-b"} <= ids
    assert body["by_role"]["driver"] >= 3 and body["total"] >= 5
    assert set(body["by_role"]) == {"admin", "restaurant", "driver", "demo"}
    wait_for(lambda: "test-b" not in {i["id"] for i in client.get("/api/realtime/connections", headers=headers)
                                      .get_json()["instances"]}, timeout_s=5, message="the expired instance to go")
    r.delete(KEY_PREFIX + "test-a")


def test_a_real_gateway_reports_its_clients(client: Any, gateway: dict[str, str], world: World) -> None:
    headers = {"Authorization": f"Bearer {world.admin}"}
    clients = [WsClient.connect(gateway["url"], token=world.driver) for _ in range(3)]
    try:
        def counted() -> bool:
            body = client.get("/api/realtime/connections", headers=headers).get_json()
            mine = [i for i in body["instances"] if i["id"] == "gw-test"]
            return bool(mine) and mine[0]["connections"] >= 3 and body["by_role"]["driver"] >= 3
        wait_for(counted, timeout_s=10, message="the gateway to publish 3 driver connections")
    finally:
        for ws in clients:
            ws.close()
