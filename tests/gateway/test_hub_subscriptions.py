"""The hub's upstream subscriptions: only its reader uses the pub/sub connection, in batches."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from tests.api.support import redis_commands
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient

CLIENTS = 30


def test_a_burst_of_first_subscribers_reaches_redis_in_fewer_commands(private_infra: Infra,
                                                                      start_gateway: Any) -> None:
    """Thirty clients subscribe to thirty new channels at once: each is confirmed, and the hub's
    reader sends them upstream together rather than one SUBSCRIBE per client."""
    _, gw = start_gateway(name="hub-batch", base=private_infra.env())
    admin = redis.Redis.from_url(private_infra.redis_url)
    clients = [WsClient.connect(gw["url"], token=World.token("admin")) for _ in range(CLIENTS)]
    try:
        for ws in clients:
            assert ws.recv()["type"] == "welcome"
        channels = [f"restaurant:{uuid.uuid4()}" for _ in clients]
        with redis_commands(admin) as used:
            for n, (ws, channel) in enumerate(zip(clients, channels, strict=True)):
                ws.send({"type": "subscribe", "channel": channel, "ref": f"s{n}"})
            replies = [ws.recv_until(lambda f, n=n: f.get("ref") == f"s{n}") for n, ws in enumerate(clients)]
        assert [reply["type"] for reply in replies] == ["subscribed"] * CLIENTS
        sent = used.get("subscribe", 0)
        assert 1 <= sent < CLIENTS, f"{sent} SUBSCRIBE commands for {CLIENTS} channels"
        assert set(admin.pubsub_channels("dms:ch:restaurant:*")) >= {f"dms:ch:{c}".encode() for c in channels}
    finally:
        for ws in clients:
            ws.close()
        admin.close()
