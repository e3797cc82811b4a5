"""Per-request state: the request id, the caller's identity, and the role checks."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import sentry_sdk
from flask import Flask, current_app, has_request_context, request
from loguru import logger

from api import keys, replicas
from api.headers import REQUEST_ID_KEY
from api.services import Services
from api.state import begin, end, hooked_state, request_state
from common.auth import Identity, bearer_token, claims_of
from common.db import ANONYMOUS, set_claims
from common.errors import Forbidden, Unauthorized
from common.logging import enabled, keep_access_line, log_context
from common.profiles import ensure_profile

_INFO_ENABLED = lambda: enabled("INFO")  # noqa: E731 - read per request: tests reconfigure logging
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    """The app's services: from the request's state inside a request (a cached read asks several
    times, and each trip through `current_app`'s proxy costs), else from the app context."""
    state = hooked_state()
    if state is not None and state.services is not None:
        return state.services
    return cast(Services, current_app.extensions["dms"])


def request_id() -> str:
    return request_state().request_id if has_request_context() else ""


def identity() -> Identity:
    found = request_state().identity
    if found is None:
        raise Unauthorized("missing bearer token")
    return found


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    token = bearer_token(header)
    if not token:
        raise Unauthorized("missing bearer token" if not header else "Authorization must be 'Bearer <token>'")
    return token


def authenticate() -> Identity:
    """Verify the bearer token once per request and remember the identity."""
    state = request_state()
    who = state.identity
    if who is None:
        who = state.identity = state.verified or services().tokens.verify(_bearer_token())
        set_claims(claims_of(who))  # every query of this request runs under row-level security
        _ensure_profile(who)
    return who


def _ensure_profile(who: Identity) -> None:
    """The contract creates a profile on a user's first authenticated request.

    Remembered in this process first (no round trip at all), then in Redis for the other processes.
    """
    seen = services().profiles_seen
    if seen.get(who.user_id):
        return
    cache_key = keys.profile_seen(who.user_id)
    try:
        if services().redis.get(cache_key):
            seen.put(who.user_id, True)
            return
    except Exception:
        logger.debug("profile cache unavailable")
    with services().pool.connection() as conn:
        ensure_profile(conn, who)
    seen.put(who.user_id, True)
    try:
        services().redis.set(cache_key, "1", ex=3600)
    except Exception:
        logger.debug("profile cache unavailable")


def require(*roles: str, write: bool = False) -> Callable[[F], F]:
    """Authenticate, then allow only `roles` (all roles when empty); `demo` never writes."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = authenticate()
            if write and who.read_only:
                raise Forbidden("demo users are read-only")
            if roles and who.role not in roles:
                raise Forbidden(f"this needs one of the roles: {', '.join(roles)}")
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def init_app(app: Flask) -> None:
    """Request id in, claims and log context per request, one structured access-log line per request."""
    replicas.init_app(app)  # read-your-writes marks and the replica-failure retry

    @app.before_request
    def _start() -> None:
        set_claims(ANONYMOUS)  # until a token says otherwise (test clients reuse one context)
        environ = request.environ
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        rid = incoming if _VALID_REQUEST_ID.match(incoming) else os.urandom(16).hex()
        environ[REQUEST_ID_KEY] = rid  # for the response headers (api/headers.py)
        state = begin(rid, time.perf_counter(), app.extensions.get("dms"))
        # Every line of this request, warnings and deeper modules included, carries its id.
        state.log_context = entered = log_context(request_id=rid)
        entered.__enter__()
        if sentry_sdk.get_client().is_active():
            sentry_sdk.set_tag("request_id", rid)  # this request's scope (the Flask integration's)

    @app.teardown_request
    def _end(_exc: BaseException | None) -> None:
        state = end()
        if state is None:
            return
        entered, state.log_context = state.log_context, None
        if entered is not None:
            entered.__exit__(None, None, None)

    @app.after_request
    def _finish(response: Any) -> Any:
        # The request id and the security headers are added by api/headers.py.
        state = request_state()
        duration_ms = (time.perf_counter() - (state.started or time.perf_counter())) * 1000
        if not _INFO_ENABLED() or not keep_access_line(status=response.status_code, duration_ms=duration_ms,
                                                       sample=services().config.log_sample_info):
            return response
        who = state.identity
        logger.bind(
            request_id=state.request_id,
            method=request.method,
            route=request.url_rule.rule if request.url_rule else "<unmatched>",
            status=response.status_code,
            duration_ms=round(duration_ms, 2),
            user_id=who.user_id if who else None,
        ).info("request")
        return response
