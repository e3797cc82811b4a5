"""`admin:connections` keeps coming when the relay runs outside the gateways, and never twice a period."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from common.auth import mint_token
from devstack.embedded import free_port
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import Process, WsClient

PERIOD_S = 2.0


def test_stats_flow_with_relay_in_gateway_false_and_once_per_period(private_infra: Infra,
                                                                      start_gateway: Any, tmp_path: Path) -> None:
    # The relay runs alone, under its former name (an alias kept for existing deployments).
    relay = Process("gateway.relay", private_infra.env(RELAY_PORT=str(free_port())), tmp_path / "relay.log")
    try:
        base = private_infra.env(RELAY_IN_GATEWAY="false")
        _, first = start_gateway(name="stats-a", base=base)
        start_gateway(name="stats-b", base=base)
        admin = WsClient.connect(first["url"], token=mint_token(JWT_SECRET, role="admin"))
        assert admin.recv()["type"] == "welcome"
        assert admin.subscribe("admin:connections")["type"] == "subscribed"
        # Each gateway writes its own numbers once a period, so the first frames may predate the
        # admin's own connection (on a loaded machine, by a period or two); the counts catch up.
        frames: list[dict[str, Any]] = []
        while len(frames) < 4 or not _counts(frames[-1], first["id"]):
            assert len(frames) < 12, [f["data"] for f in frames]
            frames.append(admin.recv_until(lambda f: f.get("event") == "connections.stats", timeout_s=10))
        admin.close()
        assert all(f["id"] is None for f in frames)
        # Two gateways, one lease per period: never two frames in the same period.
        periods = [int(datetime.fromisoformat(f["ts"].replace("Z", "+00:00")).timestamp() // PERIOD_S)
                   for f in frames]
        assert len(set(periods)) == len(periods), periods
    finally:
        relay.stop()


def _counts(frame: dict[str, Any], gateway_id: str) -> bool:
    """The frame counts the admin's connection on the gateway it is connected to."""
    return frame["data"]["total"] >= 1 and gateway_id in {i["id"] for i in frame["data"]["instances"]}
