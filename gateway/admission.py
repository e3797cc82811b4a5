"""Admission control: how many connections a gateway holds and how fast it takes new handshakes.

When a gateway dies, its clients come back at once through the proxy to the survivors. Taking
the whole storm as fast as the accept loop can go starves the connections already open (their
pings, their events) and every handshake gets slower, so more of them time out and retry. A
token bucket (`WS_ACCEPT_RATE`, burst the same) and a ceiling (`WS_MAX_CONNECTIONS`) refuse the
excess with HTTP 503 instead, before the token is verified, so a refusal costs microseconds.

Each refusal carries `Retry-After`. Clients wait at least that long (contract section 6), so the
value is where the gateway spreads a storm: under a rate refusal it is drawn uniformly from one
second up to the time the bucket needs to take the handshakes refused in the last second, so
the refused come back spread over the time the gateway needs to admit them, not in one wave.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable
from enum import StrEnum

from common.errors import Unavailable

MAX_RETRY_AFTER_S = 30
# Connections leave a full gateway unpredictably; a few seconds lets the proxy's other gateway
# and the client's own backoff do the spreading.
FULL_RETRY_AFTER_S = 5


# Descriptors a gateway keeps for itself: its pools, Redis, the listening socket, logs.
FD_RESERVE = 100


def connection_ceiling(configured: int) -> int:
    """`WS_MAX_CONNECTIONS`, lowered to what the open-files limit allows (a descriptor each).

    Past the limit `accept` fails with EMFILE and the client sees a reset; a 503 with Retry-After
    tells it, and the proxy, to go elsewhere. On a machine with 20,000 descriptors per process the
    default 20,000 becomes 19,900.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, int(soft) - FD_RESERVE))


class Refusal(StrEnum):
    """Why a handshake was refused: the label of `dms_gateway_handshakes_refused_total`."""

    DRAINING = "draining"
    FULL = "full"
    RATE = "rate"


class Refused(Unavailable):
    """A handshake refused by admission: 503 with the error body `unavailable` and `Retry-After`."""

    def __init__(self, reason: Refusal, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Admission:
    """The two limits of one gateway; `admit()` raises `Refused` or takes a handshake token."""

    def __init__(self, *, max_connections: int = 20_000, accept_rate_per_s: float = 1000.0,
                 burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random) -> None:
        self.max_connections = max_connections
        self.rate_per_s = accept_rate_per_s
        self.burst = burst if burst is not None else accept_rate_per_s
        self.tokens = self.burst
        self._clock = clock
        self._draw = draw
        self._updated = clock()
        # Refusals in the current and the previous whole second: the demand the bucket could not take.
        self._second = int(self._updated)
        self._refused_now = 0
        self._refused_before = 0
        self.admitted = 0
        self.refused: dict[Refusal, int] = dict.fromkeys(Refusal, 0)

    def admit(self, *, open_connections: int, draining: bool = False) -> None:
        """Take one handshake, or raise `Refused` saying why and when to come back."""
        if draining:
            self._refuse(Refusal.DRAINING, "this gateway is shutting down", retry_after_s=1)
        if open_connections >= self.max_connections:
            self._refuse(Refusal.FULL, f"this gateway holds its maximum of {self.max_connections} connections",
                         retry_after_s=1 + int(self._draw() * FULL_RETRY_AFTER_S))
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self.tokens < 1.0:
            self._refuse(Refusal.RATE, "this gateway is taking too many new connections, retry later",
                         retry_after_s=self._spread(now))
        self.tokens -= 1.0
        self.admitted += 1

    def _spread(self, now: float) -> int:
        """A Retry-After drawn over the seconds the bucket needs for the demand it is refusing."""
        second = int(now)
        if second != self._second:
            self._refused_before = self._refused_now if second == self._second + 1 else 0
            self._refused_now, self._second = 0, second
        self._refused_now += 1
        demand = max(self._refused_now, self._refused_before)
        backlog_s = max(1.0, demand / max(self.rate_per_s, 1e-9))
        return min(MAX_RETRY_AFTER_S, 1 + math.floor(self._draw() * backlog_s))

    def _refuse(self, reason: Refusal, message: str, *, retry_after_s: int) -> None:
        self.refused[reason] += 1
        raise Refused(reason, message, retry_after_s=max(1, retry_after_s))
