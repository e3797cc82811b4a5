"""Per-gateway numbers in Redis (each gateway writes its own key with an expiry) and their sum."""

from __future__ import annotations

import json
from typing import Any

import redis

from common.auth import ROLES
from common.redis_client import get_many

KEY_PREFIX = "dms:gw:"
TTL_S = 6


def publish_instance(client: redis.Redis, instance: dict[str, Any]) -> None:
    client.set(KEY_PREFIX + instance["id"], json.dumps(instance), ex=TTL_S)


def remove_instance(client: redis.Redis, instance_id: str) -> None:
    client.delete(KEY_PREFIX + instance_id)


def read_all(client: redis.Redis) -> dict[str, Any]:
    """The contract's `GET /api/realtime/connections` body, summed over live gateways."""
    keys = sorted(client.scan_iter(match=KEY_PREFIX + "*", count=500))
    instances = [json.loads(raw) for raw in get_many(client, keys) if raw] if keys else []
    by_role = {role: 0 for role in ROLES}
    for instance in instances:
        for role, count in instance.get("by_role", {}).items():
            by_role[role] = by_role.get(role, 0) + int(count)
    return {
        "total": sum(int(i["connections"]) for i in instances),
        "by_role": by_role,
        "subscriptions": sum(int(i["subscriptions"]) for i in instances),
        "instances": [
            {**{key: i[key] for key in ("id", "connections", "subscriptions", "messages_out_per_s",
                                        "slow_consumer_disconnects", "started_at", "last_seen")},
             "delivery_p95_ms": i.get("delivery_p95_ms")}
            for i in instances
        ],
    }
