"""What one request's hooks and views hand each other: one typed object per request.

`api/context.py` creates it first thing in every request (`begin`) and lets it go at teardown
(`end`); the rate limiter, the cache, the metrics and the views read and fill it. It lives in a
context variable, not on `flask.g`: a request reads it six times or more, and each read through
Flask's proxies cost more than the hook that asked (a sixteenth of a cached read). Every greenlet
has its own context, as Flask's own request context relies on. Where the hooks did not run (a bare
request context in a test), the state is made on first use and kept on `g` for that context.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import g

from common.auth import Identity

if TYPE_CHECKING:
    from api.cache import Prefetched
    from api.services import Services


@dataclass(slots=True)
class RequestState:
    request_id: str = ""
    started: float = 0.0  # time.perf_counter() when the first hook ran; 0.0 outside a hooked request
    log_context: AbstractContextManager[Any] | None = None  # entered by the first hook, left at teardown
    verified: Identity | None = None  # the rate limiter's token check, which authenticate() reuses
    identity: Identity | None = None  # set by authenticate(): the caller of this request
    prefetched: Prefetched | None = None  # the view's cache entry, read in the rate limiter's round trip
    list_entry: tuple[str, str] | None = None  # the catalogue list's cache entry (api/routes/products.py)
    services: Services | None = None  # the app's, for `api.context.services()` without Flask's proxy


_CURRENT: ContextVar[RequestState | None] = ContextVar("dms_request_state", default=None)


def request_state() -> RequestState:
    """This request's state; made on first use where the hooks did not run (a bare request context)."""
    found = _CURRENT.get()
    if found is None:
        found = g.get("dms")
        if found is None:
            found = g.dms = RequestState()
    return found


def hooked_state() -> RequestState | None:
    """The state the first hook made, or None outside a hooked request (no fallback to `g`)."""
    return _CURRENT.get()


def begin(request_id: str, started: float, services: Services | None) -> RequestState:
    """A fresh state for a request that starts now (the first hook)."""
    fresh = RequestState(request_id, started, services=services)
    _CURRENT.set(fresh)
    return fresh


def end() -> RequestState | None:
    """Let go of the request's state (its teardown): the next request on this greenlet, or a bare
    context, must not find it."""
    found = _CURRENT.get()
    _CURRENT.set(None)
    return found
