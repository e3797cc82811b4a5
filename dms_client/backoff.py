"""When a reconnecting client tries again: full jitter under a doubling ceiling, never before Retry-After.

The one rule of contract section 6 ("Reconnecting clients"), shared by DmsClient and by anything
else in this project that reconnects to a gateway.
"""

from __future__ import annotations

import random

__all__ = ["BASE_S", "CAP_S", "reconnect_delay"]

BASE_S = 0.5
CAP_S = 15.0


def reconnect_delay(attempt: int, *, base_s: float = BASE_S, cap_s: float = CAP_S,
                    retry_after_s: float | None = None) -> float:
    """Seconds to wait before try number `attempt` + 1 (0 right after a working connection ended):
    uniform in [0, min(cap, base * 2^attempt)], and at least `retry_after_s`."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 32))  # the exponent bounded: no overflow after days offline
    return max(random.uniform(0, ceiling), retry_after_s or 0.0)
