"""Headers every response carries, added where the response leaves the app (a WSGI middleware):
the request id, the rate-limit window, the security headers.

Setting them on each Flask response object validated every value again, about as much work as
the rest of a cached read; here they are ready tuples appended to the header list. A header the
view set itself (the pages' own Content-Security-Policy, a cached read's Cache-Control) is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

REQUEST_ID_KEY = "dms.request_id"  # environ entries filled by api/context.py and api/ratelimit.py
RATE_WINDOW_KEY = "dms.rate_window"  # an object with `headers`, the X-RateLimit-* pairs
READY_KEY = "dms.ready_headers"  # pairs a view hands over as they are (add_ready)
ALWAYS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"))
# JSON answers: nothing may load from or frame them, and nothing may store them unless a view says so.
DEFAULTS = (("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
            ("Cache-Control", "no-store"))
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def _https(environ: dict[str, Any]) -> bool:
    return environ.get("HTTP_X_FORWARDED_PROTO") == "https" or environ.get("wsgi.url_scheme") == "https"


def add_ready(environ: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Headers for this request's response that need no checking (constants, hex digests); they
    replace what an earlier call gave."""
    environ[READY_KEY] = pairs


class ResponseHeaders:
    """WSGI middleware: the request id, the security headers and the JSON defaults on every answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = headers + environ.get(READY_KEY, [])
            present = {name.lower() for name, _ in headers}
            extra = [pair for pair in ALWAYS if pair[0].lower() not in present]
            extra += [pair for pair in DEFAULTS if pair[0].lower() not in present]
            request_id = environ.get(REQUEST_ID_KEY)
            if request_id and "x-request-id" not in present:
                extra.append(("X-Request-ID", request_id))
            window = environ.get(RATE_WINDOW_KEY)
            if window is not None:
                extra += window.headers
            if _https(environ):
                extra.append(HSTS)
            return start_response(status, headers + extra, exc_info)

        return self.app(environ, start)
