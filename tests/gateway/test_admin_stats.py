"""`admin:connections` keeps coming when the relay runs outside the gateways, and never twice a period."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import Process, WsClient

PERIOD_S = 2.0


def test_stats_flow_with_relay_in_gateway_false_and_once_per_period(private_infra: Infra,
                                                                      start_gateway: Any, tmp_path: Path) -> None:
    relay = Process("gateway.relay", private_infra.env(), tmp_path / "relay.log")  # the relay runs alone
    try:
        base = private_infra.env(RELAY_IN_GATEWAY="false")
        _, first = start_gateway(name="stats-a", base=base)
        start_gateway(name="stats-b", base=base)
        admin = WsClient.connect(first["url"], token=mint_token(JWT_SECRET, role="admin"))
        assert admin.recv()["type"] == "welcome"
        assert admin.subscribe("admin:connections")["type"] == "subscribed"
        frames = [admin.recv_until(lambda f: f.get("event") == "connections.stats", timeout_s=10)
                  for _ in range(4)]
        admin.close()
        assert all(f["id"] is None and f["data"]["total"] >= 1 for f in frames)
        assert {i["id"] for f in frames for i in f["data"]["instances"]} >= {first["id"]}
        # Two gateways, one lease per period: never two frames in the same period.
        periods = [int(datetime.fromisoformat(f["ts"].replace("Z", "+00:00")).timestamp() // PERIOD_S)
                   for f in frames]
        assert len(set(periods)) == len(periods), periods
    finally:
        relay.stop()
