"""Operational alerts checked inside the API: thresholds, evaluation, and start/stop logging.

The same thresholds are shipped as Prometheus alerting rules in docs/deploy/prometheus-alerts.yml;
this module is for deployments without Prometheus and for `GET /api/performance/database`.
State is kept per process: each API process logs once when an alert starts and once when it stops.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from prometheus_client import Gauge

QUERY_P95_MS = 200.0
POOL_UTILISATION = 0.8
CACHE_HIT_RATIO = 0.5
CACHE_MIN_LOOKUPS = 100  # below this the ratio says more about a cold cache than a broken one
RELAY_LAG_S = 1.0
SLOW_CONSUMER_STORM = 10  # slow-consumer disconnects across all gateways ...
SLOW_CONSUMER_WINDOW_S = 60.0  # ... within this window

ALERT_NAMES = ("query_latency_p95", "pool_utilisation", "cache_hit_ratio", "relay_lag", "slow_consumer_storm")
FIRING = Gauge("dms_api_alert_firing", "1 while this API process finds the alert firing", ["alert"])
for _name in ALERT_NAMES:
    FIRING.labels(_name).set(0)


@dataclass(frozen=True)
class Readings:
    """What the alerts look at; None where a source could not be read (that alert is skipped)."""

    query_p95_ms: float | None = None
    pool_utilisation: float | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    relay_lag_s: float | None = None
    slow_consumer_disconnects: int | None = None  # within the last SLOW_CONSUMER_WINDOW_S


@dataclass(frozen=True)
class Alert:
    name: str
    message: str
    value: float
    threshold: float
    severity: str = "warning"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(r: Readings) -> list[Alert]:
    """Every alert whose threshold the readings cross, in ALERT_NAMES order."""
    found: list[Alert] = []
    if r.query_p95_ms is not None and r.query_p95_ms > QUERY_P95_MS:
        found.append(Alert("query_latency_p95", f"query p95 is {r.query_p95_ms:.0f} ms (over {QUERY_P95_MS:.0f} ms)",
                           round(r.query_p95_ms, 2), QUERY_P95_MS))
    if r.pool_utilisation is not None and r.pool_utilisation > POOL_UTILISATION:
        found.append(Alert("pool_utilisation", f"database pool {r.pool_utilisation:.0%} in use "
                           f"(over {POOL_UTILISATION:.0%})", round(r.pool_utilisation, 3), POOL_UTILISATION,
                           severity="critical"))
    if r.cache_hits is not None and r.cache_misses is not None:
        lookups = r.cache_hits + r.cache_misses
        ratio = r.cache_hits / lookups if lookups else 1.0
        if lookups >= CACHE_MIN_LOOKUPS and ratio < CACHE_HIT_RATIO:
            found.append(Alert("cache_hit_ratio", f"cache hit ratio {ratio:.0%} (under {CACHE_HIT_RATIO:.0%})",
                               round(ratio, 3), CACHE_HIT_RATIO))
    if r.relay_lag_s is not None and r.relay_lag_s > RELAY_LAG_S:
        found.append(Alert("relay_lag", f"oldest unpublished event waits {r.relay_lag_s:.1f} s "
                           f"(over {RELAY_LAG_S:.0f} s)", round(r.relay_lag_s, 3), RELAY_LAG_S, severity="critical"))
    if r.slow_consumer_disconnects is not None and r.slow_consumer_disconnects > SLOW_CONSUMER_STORM:
        found.append(Alert("slow_consumer_storm", f"{r.slow_consumer_disconnects} slow-consumer disconnects in the "
                           f"last {SLOW_CONSUMER_WINDOW_S:.0f} s (over {SLOW_CONSUMER_STORM})",
                           r.slow_consumer_disconnects, SLOW_CONSUMER_STORM))
    return found


class AlertState:
    """Which alerts fire in this process; logs each start and each stop once."""

    def __init__(self) -> None:
        self._firing: dict[str, Alert] = {}
        self._lock = threading.Lock()

    @property
    def firing(self) -> list[str]:
        return sorted(self._firing)

    def update(self, alerts: list[Alert], *, checked: frozenset[str] | None = None) -> None:
        """Record the alerts now firing; `checked` limits stops to alerts whose source was read."""
        now = {alert.name: alert for alert in alerts}
        checked = frozenset(ALERT_NAMES) if checked is None else checked
        with self._lock:
            started = [now[name] for name in now if name not in self._firing]
            stopped = [name for name in self._firing if name not in now and name in checked]
            for alert in started:
                self._firing[alert.name] = alert
            for name in stopped:
                del self._firing[name]
        for alert in started:
            FIRING.labels(alert.name).set(1)
            logger.bind(alert=alert.name, value=alert.value, threshold=alert.threshold).warning(
                "alert started: {}", alert.message)
        for name in stopped:
            FIRING.labels(name).set(0)
            logger.bind(alert=name).info("alert stopped: {}", name)


def checked_names(r: Readings) -> frozenset[str]:
    """The alerts the readings could decide (a source that failed neither starts nor stops one)."""
    sources = {
        "query_latency_p95": r.query_p95_ms, "pool_utilisation": r.pool_utilisation,
        "cache_hit_ratio": r.cache_hits, "relay_lag": r.relay_lag_s,
        "slow_consumer_storm": r.slow_consumer_disconnects,
    }
    return frozenset(name for name, value in sources.items() if value is not None)


class CounterDelta:
    """Growth over the last `window_s` of cumulative per-instance counters (gateways' published totals).

    A counter that went down (its gateway restarted) counts from zero; an instance first seen now
    counts from now. At most one sample a second is kept, so memory stays bounded.
    """

    def __init__(self, *, window_s: float = SLOW_CONSUMER_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._lock = threading.Lock()

    def update(self, counts: dict[str, int]) -> int:
        now = self.clock()
        with self._lock:
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, dict(counts)))
            # The baseline is the newest sample that is at least a window old (else the oldest).
            while len(self._samples) >= 2 and self._samples[1][0] <= now - self.window_s:
                self._samples.popleft()
            base = self._samples[0][1]
        return sum(n if n < base.get(i, n) else n - base.get(i, n) for i, n in counts.items())
