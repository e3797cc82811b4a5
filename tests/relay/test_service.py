"""`python -m relay` alone: it leads, publishes, and answers /health and /metrics on RELAY_HOST:RELAY_PORT."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from common.db import connect
from common.events import REDIS_PREFIX, write_event
from devstack.embedded import free_port
from tests.fix_infra import Infra
from tests.gateway.test_metrics import scrape_when, value
from tests.helpers import Process, seconds, wait_for


def test_the_relay_alone_serves_health_and_metrics(private_infra: Infra, tmp_path: Path) -> None:
    port = free_port()
    relay = Process("relay", private_infra.env(RELAY_HOST="127.0.0.1", RELAY_PORT=str(port)), tmp_path / "relay.log")
    http = f"http://127.0.0.1:{port}"
    try:
        relay.wait_http_ok(f"{http}/health")

        def health() -> dict[str, object]:
            with urllib.request.urlopen(f"{http}/health", timeout=seconds(5)) as response:
                assert response.status == 200
                return json.loads(response.read())

        assert wait_for(lambda: health()["relay_leader"] is True, message="the lone relay leads")
        client = redis.Redis.from_url(private_infra.redis_url)
        listener = client.pubsub()
        listener.subscribe(REDIS_PREFIX + "orders")
        with connect(private_infra.database_url) as conn:
            write_event(conn, event="test.relayed", channels=["orders"], data={"n": 1})
            conn.commit()
        message = wait_for(lambda: listener.get_message(ignore_subscribe_messages=True, timeout=0.2),
                           message="the event on Redis")
        assert str(message["data"], "utf-8").split("|", 1)[1].startswith('{"type":"event"')
        samples = scrape_when(http, lambda s: value(s, "dms_relay_published_events_total") >= 1,
                              message="the published count on /metrics")
        assert value(samples, "dms_gateway_relay_leader") == 1
        assert value(samples, "dms_relay_lag_seconds_count") >= 1
        assert ("dependency", "postgres") in {pair for labels in samples["dms_gateway_reconnects_total"]
                                              for pair in labels}
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{http}/ws", timeout=seconds(5))
        assert missing.value.code == 404
        missing.value.close()
        listener.close()
        client.close()
    finally:
        assert relay.stop() == 0, relay.log()[-3000:]
