"""Prometheus metrics of the relay, wherever it runs (alone or inside a gateway process).

Names keep their earlier spelling (`dms_gateway_relay_leader`, `dms_gateway_reconnects_total`),
which dashboards and docs/deploy/prometheus-alerts.yml use.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import build_info  # noqa: F401  (dms_build_info: the relay run alone exports it too)

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Shared with the gateway's hub (component "hub"): one counter of lost dependency connections.
RECONNECTS = Counter("dms_gateway_reconnects_total", "Connections to a dependency lost (then retried)",
                     ["component", "dependency"])
RELAY_LAG = Histogram("dms_relay_lag_seconds", "Event created_at to its publish to Redis by the relay",
                      buckets=LAG_BUCKETS)
for _component, _dependency in (("hub", "redis"), ("relay", "postgres"), ("relay", "redis")):
    RECONNECTS.labels(_component, _dependency)


def observe_relay_lag(rows: list[dict[str, Any]]) -> None:
    """Each published row's wait between its insert (created_at) and now."""
    now = datetime.now(UTC)
    for row in rows:
        created = row.get("created_at")
        if isinstance(created, datetime):
            RELAY_LAG.observe(max(0.0, (now - created).total_seconds()))


class RelayCollector(Collector):
    """Leadership and published counts of the relays of this process, read at scrape time."""

    def __init__(self) -> None:
        self._relays: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, relay: Any) -> None:
        self._relays.add(relay)

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("dms_gateway_relay_leader", "1 while this process's relay is the active one")
        published = CounterMetricFamily("dms_relay_published_events", "Events this process's relay published")
        relays = list(self._relays)
        leader.add_metric([], sum(int(relay.is_leader) for relay in relays))
        published.add_metric([], sum(relay.published_total for relay in relays))
        yield from (leader, published)


RELAYS = RelayCollector()
REGISTRY.register(RELAYS)
