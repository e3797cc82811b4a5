"""Prometheus metrics of one gateway process, served at `GET /metrics` (the relay's are in relay.metrics).

Rare events (closes, reconnects) update prometheus-client counters where
they happen. Per-frame counts (frames in and out) are plain integers on the Gateway and its
transports, read at scrape time with the gauges of live state (connections by role,
subscriptions, queued frames): no lock per frame on the hot path, and nothing can drift. Label values come
from bounded sets: roles, disconnect reasons, component and dependency names; never ids.

`dms_gateway_delivery_lag_seconds` is the age of a stored event (now minus its `ts`, the commit
time) when the hub has put it into every local subscriber's queue. Reading `ts` needs a JSON parse
the fan-out otherwise avoids, so only one message in DELIVERY_SAMPLE_EVERY is measured.
"""

from __future__ import annotations

import json
import weakref
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import build_info  # noqa: F401  (dms_build_info, exported by every process)
from common.auth import ROLES
from gateway.closes import LABELS
from relay.metrics import LAG_BUCKETS, RECONNECTS

__all__ = ["CLOSES", "DISCONNECTS", "GATEWAYS", "RECONNECTS", "count_close", "observe_delivery"]

DELIVERY_SAMPLE_EVERY = 16
# The earlier counter of two close reasons; dashboards and tests still read it.
DISCONNECT_REASONS = ("slow_consumer", "ping_timeout")

CLOSES = Counter("dms_ws_closes_total", "Connections ended, by reason (gateway/closes.py)", ["reason"])
DISCONNECTS = Counter("dms_gateway_disconnects_total", "Connections the gateway closed, by reason", ["reason"])
DELIVERY_LAG = Histogram("dms_gateway_delivery_lag_seconds",
                         f"Event commit time to hub fan-out into local queues (1 in {DELIVERY_SAMPLE_EVERY} sampled)",
                         buckets=LAG_BUCKETS)
REPLAYS = Counter("dms_gateway_replays_total",
                  "Subscriptions replayed with since, by where the events came from "
                  "(memory, shared_read: one store read for the channel, own_read: the client alone)", ["source"])
STORE_READS = Counter("dms_gateway_replay_store_reads_total",
                      "PostgreSQL reads made for replays (shared: one per channel and moment; own: one client's page)",
                      ["kind"])
BURSTS = Counter("dms_gateway_hub_bursts_total",
                 "Times the hub found several messages waiting and wrote each socket once for all of them")
BURST_MESSAGES = Counter("dms_gateway_hub_burst_messages_total", "Messages the hub dispatched inside bursts")
HANDSHAKES = Counter("dms_gateway_handshakes_total", "WebSocket handshakes answered, by outcome", ["outcome"])
# Counted where a compressed frame is made: once per publication (or shared batch), never per delivery.
DEFLATED = Counter("dms_gateway_deflated_frames_total",
                   "Frames compressed for permessage-deflate clients (each shared by all of them), by kind",
                   ["kind"])
for _kind in ("event", "batch"):
    DEFLATED.labels(_kind)
for _source in ("memory", "shared_read", "own_read"):
    REPLAYS.labels(_source)
for _kind in ("shared", "own"):
    STORE_READS.labels(_kind)
for _outcome in ("admitted", "refused_draining", "refused_full", "refused_rate"):
    HANDSHAKES.labels(_outcome)
for _reason in DISCONNECT_REASONS:
    DISCONNECTS.labels(_reason)
for _label in LABELS:
    CLOSES.labels(_label)


def count_close(label: str) -> None:
    """One connection ended (counted once per connection, at its first close or drop)."""
    CLOSES.labels(label).inc()
    if label in DISCONNECT_REASONS:
        DISCONNECTS.labels(label).inc()


# The sampled delivery lags of the last stats period, for the admin numbers' p95 (a histogram's
# buckets are too coarse to chart a p95 from).
_RECENT_DELIVERIES: deque[float] = deque(maxlen=2000)


def delivery_p95_ms() -> float | None:
    """p95 of the delivery lags seen since the last call (None when there were none), then forget them."""
    lags = sorted(_RECENT_DELIVERIES)
    _RECENT_DELIVERIES.clear()
    if not lags:
        return None
    return round(lags[min(len(lags) - 1, int(0.95 * len(lags)))] * 1000, 1)


def observe_delivery(frame: str) -> None:
    """Record how old the event in `frame` is now; frames without a readable `ts` are skipped."""
    try:
        ts = json.loads(frame)["ts"]
        committed = datetime.fromisoformat(ts)
    except (ValueError, KeyError, TypeError):
        return
    if committed.tzinfo is None:
        return
    lag = max(0.0, (datetime.now(UTC) - committed).total_seconds())
    DELIVERY_LAG.observe(lag)
    _RECENT_DELIVERIES.append(lag)


class GatewayCollector(Collector):
    """Live gauges of the gateways of this process (one in production), summed, at scrape time."""

    def __init__(self) -> None:
        self._gateways: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, gateway: Any) -> None:
        self._gateways.add(gateway)

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily("dms_gateway_connections", "Open WebSocket connections by role",
                                        labels=["role"])
        subscriptions = GaugeMetricFamily("dms_gateway_subscriptions", "Channel subscriptions of all connections")
        channels = GaugeMetricFamily("dms_gateway_channels", "Channels this gateway holds in Redis")
        queued = GaugeMetricFamily("dms_gateway_outbound_queue_frames", "Frames waiting in all outbound queues")
        deepest = GaugeMetricFamily("dms_gateway_outbound_queue_max_frames", "Frames in the fullest outbound queue")
        deflate = GaugeMetricFamily("dms_gateway_deflate_connections",
                                    "Open connections that agreed permessage-deflate")
        messages = CounterMetricFamily("dms_gateway_hub_messages", "Messages the hub received from Redis")
        frames_in = CounterMetricFamily("dms_gateway_frames_in", "Text frames received from clients")
        frames_out = CounterMetricFamily("dms_gateway_frames_out", "Frames handed to client sockets")
        by_role = dict.fromkeys(ROLES, 0)
        totals = {"subscriptions": 0, "channels": 0, "queued": 0, "deepest": 0, "messages": 0, "frames_in": 0,
                  "frames_out": 0, "deflate": 0}
        for gateway in list(self._gateways):
            for conn in list(gateway.connections):
                by_role[conn.identity.role] = by_role.get(conn.identity.role, 0) + 1
                totals["subscriptions"] += len(conn.subscriptions)
                totals["queued"] += conn.queued_frames
                totals["deepest"] = max(totals["deepest"], conn.queued_frames)
                totals["deflate"] += conn.deflate is not None
            totals["frames_in"] += gateway.frames_in
            totals["frames_out"] += gateway.frames_out_total()
            totals["channels"] += len(gateway.hub.channels)
            totals["messages"] += gateway.hub.messages_in
        for role, count in by_role.items():
            connections.add_metric([role], count)
        subscriptions.add_metric([], totals["subscriptions"])
        channels.add_metric([], totals["channels"])
        queued.add_metric([], totals["queued"])
        deepest.add_metric([], totals["deepest"])
        deflate.add_metric([], totals["deflate"])
        messages.add_metric([], totals["messages"])
        frames_in.add_metric([], totals["frames_in"])
        frames_out.add_metric([], totals["frames_out"])
        yield from (connections, subscriptions, channels, queued, deepest, deflate, messages, frames_in, frames_out)


GATEWAYS = GatewayCollector()
REGISTRY.register(GATEWAYS)
