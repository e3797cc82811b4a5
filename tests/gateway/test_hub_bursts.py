"""The hub's bursts: messages waiting together in its Redis connection leave each socket in one write."""

from __future__ import annotations

import json
import uuid

import redis as redis_lib

from common.events import publish_ephemeral
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.gateway.test_metrics import scrape, value
from tests.helpers import WsClient


def test_a_burst_of_events_reaches_a_subscriber_whole_and_in_order(gateway: dict[str, str], infra: Infra,
                                                                   world: World) -> None:
    """Messages waiting together in the hub's Redis connection are dispatched as one burst (each
    socket written once for all of them): every event still arrives, once, in order."""
    def burst_messages() -> float:
        return value(scrape(gateway["http"]), "dms_gateway_hub_burst_messages_total")

    ws = WsClient.connect(gateway["url"], token=world.admin)
    try:
        assert ws.recv()["type"] == "welcome"
        channel = f"restaurant:{uuid.uuid4()}"
        ws.subscribe(channel)
        before = burst_messages()
        publisher = redis_lib.Redis.from_url(infra.redis_url)
        with publisher.pipeline(transaction=False) as pipe:  # one write: Redis forwards them together
            for n in range(40):
                frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.burst",
                                    "data": {"n": n}, "ts": "2026-01-01T00:00:00Z"})
                publish_ephemeral(pipe, channel, frame)
            pipe.execute()
        publisher.close()
        got = [event["data"]["n"] for event in ws.events(40, channel=channel, timeout_s=10)]
        assert got == list(range(40))
        assert burst_messages() - before >= 2
    finally:
        ws.close()
