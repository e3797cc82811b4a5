"""`GET /metrics` on a real gateway, and the Prometheus alert rules against real scrapes."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from api import alerts
from tests.fix_infra import Infra
from tests.fix_world import World, write_events
from tests.helpers import ROOT, WsClient, seconds, wait_for

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
RULES = ROOT / "docs" / "deploy" / "prometheus-alerts.yml"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def scrape(http: str) -> Samples:
    with urllib.request.urlopen(f"{http}/metrics", timeout=seconds(10)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def scrape_when(http: str, condition: Callable[[Samples], bool], *, message: str, timeout_s: float = 10.0
                ) -> Samples:
    """The first scrape for which `condition` holds, polled until the (scaled) deadline."""
    def ready() -> Samples | None:
        samples = scrape(http)
        return samples if condition(samples) else None

    return wait_for(ready, timeout_s=timeout_s, message=message)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


def test_live_gauges_and_frame_counters(gateway: dict[str, str], world: World) -> None:
    before = scrape(gateway["http"])
    ws = _welcomed(gateway["url"], world.admin)
    try:
        ws.subscribe(f"restaurant:{world.restaurant_id}")
        during = scrape_when(gateway["http"], lambda s: value(s, "dms_gateway_connections", role="admin") >= 1,
                             message="the admin connection in the gauge")
        assert value(during, "dms_gateway_subscriptions") >= 1
        assert value(during, "dms_gateway_channels") >= 1
        assert set(during["dms_gateway_connections"]) == {
            (("role", role),) for role in ("admin", "restaurant", "driver", "demo")}
        assert value(during, "dms_gateway_frames_in_total") >= value(before, "dms_gateway_frames_in_total") + 1
        # welcome and subscribed went out
        assert value(during, "dms_gateway_frames_out_total") >= value(before, "dms_gateway_frames_out_total") + 2
        assert value(during, "dms_gateway_outbound_queue_frames") >= 0
    finally:
        ws.close()
    after = scrape_when(gateway["http"], lambda s: value(s, "dms_gateway_connections", role="admin")
                        < value(during, "dms_gateway_connections", role="admin"),
                        message="the closed connection leaving the gauge")
    assert value(after, "dms_gateway_disconnects_total", reason="slow_consumer") >= 0
    assert ("reason", "ping_timeout") in {pair for labels in after["dms_gateway_disconnects_total"] for pair in labels}


def test_relay_lag_and_sampled_delivery_lag(gateway: dict[str, str], infra: Any, world: World) -> None:
    wait_for(lambda: value(scrape(gateway["http"]), "dms_gateway_relay_leader") == 1, message="the relay leads")
    channel = f"restaurant:{world.restaurant_id}"
    ws = _welcomed(gateway["url"], world.admin)
    try:
        ws.subscribe(channel)
        before = scrape(gateway["http"])
        ids = write_events(infra.database_url, channel, 2 * 16)  # every 16th hub message is measured
        assert [frame["id"] for frame in ws.events(len(ids), channel=channel)] == ids
    finally:
        ws.close()
    after = scrape(gateway["http"])
    relayed = value(after, "dms_relay_lag_seconds_count") - value(before, "dms_relay_lag_seconds_count")
    assert relayed >= len(ids)
    assert value(after, "dms_relay_published_events_total") - value(before, "dms_relay_published_events_total") \
        >= len(ids)
    assert value(after, "dms_relay_lag_seconds_sum") - value(before, "dms_relay_lag_seconds_sum") < relayed * 5
    sampled = value(after, "dms_gateway_delivery_lag_seconds_count") - \
        value(before, "dms_gateway_delivery_lag_seconds_count")
    assert 1 <= sampled <= len(ids) // 16 + 1
    assert value(after, "dms_gateway_hub_messages_total") - value(before, "dms_gateway_hub_messages_total") \
        >= len(ids)


def test_a_ping_timeout_is_counted(start_gateway: Any, world: World) -> None:
    _, gw = start_gateway(name="metrics-ping", WS_PING_INTERVAL="0.3", WS_PING_TIMEOUT="0.3")
    host, port = gw["http"].split("//")[1].split(":")
    # Completes the handshake, then never reads or answers a ping.
    silent = socket.create_connection((host, int(port)))
    try:
        silent.sendall(
            b"GET /ws?token=" + world.admin.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        wait_for(lambda: value(scrape(gw["http"]), "dms_gateway_disconnects_total", reason="ping_timeout") == 1,
                 message="one ping-timeout disconnect")
        # The close catalogue counts the same end once, under its own label.
        samples = scrape(gw["http"])
        assert value(samples, "dms_ws_closes_total", reason="ping_timeout") == 1
        assert value(samples, "dms_ws_closes_total", reason="connection_lost") == 0
    finally:
        silent.close()
    assert value(scrape(gw["http"]), "dms_gateway_disconnects_total", reason="slow_consumer") == 0
    assert sum(scrape(gw["http"])["dms_ws_closes_total"].values()) == 1  # its end is counted once


def test_lost_redis_and_postgres_connections_are_counted(private_infra: Infra, start_gateway: Any) -> None:
    _, gw = start_gateway(name="metrics-faults", base=private_infra.env())
    wait_for(lambda: value(scrape(gw["http"]), "dms_gateway_relay_leader") == 1, message="the relay leads")
    private_infra.restart_redis()
    wait_for(lambda: value(scrape(gw["http"]), "dms_gateway_reconnects_total", component="hub", dependency="redis")
             >= 1, timeout_s=30, message="the hub's Redis reconnect")
    private_infra.restart_postgres()
    after = scrape_when(gw["http"], lambda s: value(s, "dms_gateway_reconnects_total", component="relay",
                                                     dependency="postgres") >= 1,
                        timeout_s=30, message="the relay's PostgreSQL reconnect")
    # And it leads again afterwards.
    wait_for(lambda: value(scrape(gw["http"]), "dms_gateway_relay_leader") == 1, timeout_s=30,
             message="the relay leading again")
    assert value(after, "dms_gateway_reconnects_total", component="hub", dependency="redis") >= 1


# -- alert rules -------------------------------------------------------------------------------
def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(Path(RULES).read_text())
    # The dms-replication group needs a live replica: tests/topology/test_failover.py checks it.
    rules = [rule for group in doc["groups"] if group["name"] != "dms-replication" for rule in group["rules"]]
    assert rules
    return rules


def test_alert_rules_are_valid_and_name_only_metrics_that_exist(gateway: dict[str, str], client: Any,
                                                                world: World) -> None:
    client.get(f"/api/products/{world.products[0]['id']}", headers={"Authorization": f"Bearer {world.admin}"})
    api_scrape = client.get("/metrics")
    assert api_scrape.status_code == 200
    exposed = set(parse(api_scrape.get_data(as_text=True))) | set(scrape(gateway["http"]))
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Dms[A-Za-z]+", rule["alert"]) and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"])
        names = set(re.findall(r"\bdms_[a-z0-9_]+", rule["expr"]))
        assert names, rule["alert"]
        assert names <= exposed, f"{rule['alert']}: {sorted(names - exposed)} not in any scrape"


def test_alert_rules_use_the_same_thresholds_as_the_api() -> None:
    expected = {
        "query_latency_p95": {alerts.QUERY_P95_MS / 1000},
        "pool_utilisation": {alerts.POOL_UTILISATION},
        "cache_hit_ratio": {alerts.CACHE_HIT_RATIO, alerts.CACHE_MIN_LOOKUPS},
        "relay_lag": {alerts.RELAY_LAG_S},
        "slow_consumer_storm": {alerts.SLOW_CONSUMER_STORM},
    }
    covered = set()
    for rule in _rules():
        name = rule["labels"]["dms_alert"]
        assert name in alerts.ALERT_NAMES
        covered.add(name)
        compared = {float(n) for n in re.findall(r"[<>]=?\s*([0-9.]+)", rule["expr"])}
        if rule["alert"] == "DmsRelayNoLeader":
            continue  # the relay-lag rule's companion: a stopped relay observes no lag at all
        assert compared == {float(n) for n in expected[name]}, rule["alert"]
    assert covered == set(alerts.ALERT_NAMES)


def test_every_exposed_api_and_gateway_metric_follows_the_naming_rules(gateway: dict[str, str], client: Any) -> None:
    families = list(text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)))
    with urllib.request.urlopen(f"{gateway['http']}/metrics", timeout=seconds(10)) as response:
        families += list(text_string_to_metric_families(response.read().decode()))
    ours = [f for f in families if f.name.startswith("dms_")]
    assert len(ours) >= 15
    id_like = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9a-f]{16}")  # UUIDs, hex connection ids
    for family in ours:
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            # The build's commit names the code, not a user or a connection: one series per process.
            labels = {k: v for k, v in sample.labels.items()
                      if not (family.name.startswith("dms_build") and k == "commit")}
            assert not any(id_like.search(v) for v in labels.values() if v), (family.name, sample.labels)
