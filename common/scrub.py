"""One scrubber for everything that leaves for Sentry: errors, transactions, spans, breadcrumbs."""

from __future__ import annotations

import re
from typing import Any

FILTERED = "[Filtered]"

# Headers (and the request's `cookies`) whose whole value is a credential.
_SECRET_HEADERS = frozenset({"authorization", "cookie", "cookies", "set-cookie", "proxy-authorization", "x-api-key"})
# Query or form keys whose value is a credential (`?token=` on a handshake, `?ticket=` a connect ticket).
_SECRET_KEYS = ("token", "ticket", "access_token", "refresh_token", "id_token", "jwt", "password", "secret")
_KEY_VALUE = re.compile(r"(?i)((?:^|[?&;\s\"'])(?:" + "|".join(_SECRET_KEYS) + r")=)[^&\s\"';#]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# A JWT wherever it hides (a path segment, a message, a span description): three base64url parts,
# the first two JSON objects (`eyJ` is `{"` in base64url).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def scrub_text(text: str) -> str:
    """Mask JWTs, bearer values and credential query values in one string."""
    return _BEARER.sub(r"\1" + FILTERED, _KEY_VALUE.sub(r"\1" + FILTERED, _JWT.sub(FILTERED, text)))


def scrub(value: Any) -> Any:
    """Scrub a Sentry payload in place (and return it): every string, every credential header.

    Walking the whole event rather than known fields is the point: request data sits in
    `request`, in each span's `data` (`url.query`, `http.query`), in breadcrumbs' `data.url` and
    in `contexts`; the SDK adds fields between versions, and a new one must not leak.
    """
    if isinstance(value, dict):
        for key in list(value):
            item = value[key]
            if isinstance(key, str) and key.lower() in _SECRET_HEADERS and item:
                value[key] = FILTERED
            elif isinstance(key, str) and key.lower() in _SECRET_KEYS and isinstance(item, str | list):
                value[key] = FILTERED
            else:
                value[key] = scrub(item)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            # Header lists come as [name, value] pairs.
            if (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)
                    and item[0].lower() in _SECRET_HEADERS):
                value[index] = [item[0], FILTERED]
            else:
                value[index] = scrub(item)
        return value
    if isinstance(value, tuple):
        return tuple(scrub(list(value)))
    if isinstance(value, str):
        return scrub_text(value)
    return value


def before_send(event: Any, _hint: Any) -> Any:
    """Sentry's `before_send` and `before_send_transaction` hook."""
    return scrub(event)


def before_breadcrumb(crumb: Any, _hint: Any) -> Any:
    return scrub(crumb)
