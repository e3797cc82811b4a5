"""Rate-limit leases: the part of a shared Redis counter one API process has taken and not spent.

A request spends one token of its counter's lease without a round trip; only when the lease is
spent does the limiter go to Redis, and takes the next lease in the same script call that counts
the request (api/ratelimit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import RateLimit
from common.ttl_cache import TtlCache

# A process takes at most this share of a limit at once, and never more than MAX_LEASE.
LEASE_SHARE = 50
MAX_LEASE = 1000
MAX_PERIOD_S = 86_400 + 1  # the longest window a limit can have (a day), and a second


@dataclass
class Lease:
    tokens: int  # left to spend here
    through: int  # the shared count at the end of this lease


Leases = TtlCache[str, Lease]


def new_leases() -> Leases:
    """One per process; an entry never outlives its window (a forgotten lease is only unspent)."""
    return TtlCache(max_entries=100_000, ttl_s=MAX_PERIOD_S)


def lease_size(limit: RateLimit) -> int:
    return max(1, min(MAX_LEASE, limit.count // LEASE_SHARE))
