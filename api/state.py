"""What one request's hooks and views hand each other: one typed object on `flask.g`.

`api/context.py` creates it first thing in every request; the rate limiter, the cache, the metrics
and the views read and fill it. One attribute lookup on `g`, as each value used to cost.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import g

from common.auth import Identity

if TYPE_CHECKING:
    from api.cache import Prefetched


@dataclass(slots=True)
class RequestState:
    request_id: str = ""
    started: float = 0.0  # time.perf_counter() when the first hook ran; 0.0 outside a hooked request
    log_context: AbstractContextManager[Any] | None = None  # entered by the first hook, left at teardown
    verified: Identity | None = None  # the rate limiter's token check, which authenticate() reuses
    identity: Identity | None = None  # set by authenticate(): the caller of this request
    prefetched: Prefetched | None = None  # the view's cache entry, read in the rate limiter's round trip
    list_entry: tuple[str, str] | None = None  # the catalogue list's cache entry (api/routes/products.py)


def request_state() -> RequestState:
    """This request's state; made on first use where the hooks did not run (a bare request context)."""
    found: RequestState | None = g.get("dms")
    if found is None:
        found = g.dms = RequestState()
    return found


def begin(request_id: str, started: float) -> RequestState:
    """A fresh state for a request that starts now (the first hook)."""
    g.dms = fresh = RequestState(request_id, started)
    return fresh
