"""An identity provider's signing keys (a JWKS document), cached, fetched again at most once per 30 s."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from common.errors import Unauthorized, Unavailable

# RFC 7518 names of the asymmetric algorithms accepted from a JWKS.
ALGORITHMS = ("RS256", "ES256")
REFETCH_AFTER_S = 30.0


class KeySet:
    """Keys by `kid`. An unknown `kid` fetches the document again, at most once per `refetch_after_s`.

    PyJWT's PyJWKClient fetches again on every unknown `kid`: anyone could make each request of
    ours a request to the identity provider with made-up key ids. Here the refetch is rate-bound,
    the fetch happens under a lock (one fetch for many waiting requests), and a rotation replaces
    the whole set: a key the provider withdrew stops working with the next fetch.
    """

    def __init__(self, url: str, *, refetch_after_s: float = REFETCH_AFTER_S, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.refetch_after_s = refetch_after_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: object) -> jwt.PyJWK:
        """The key named `kid`, or `Unauthorized`; `Unavailable` when the document cannot be read."""
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token header has no key id ('kid')")
        found = self._keys.get(kid)
        if found is not None:
            return found
        with self._lock:
            found = self._keys.get(kid)
            now = self.clock()
            if found is None and (self._fetched_at is None or now - self._fetched_at >= self.refetch_after_s):
                self._fetched_at = now
                self._keys = self._fetch()
                found = self._keys.get(kid)
        if found is None:
            raise Unauthorized("token key id is unknown")
        return found

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        self.fetches += 1
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:  # noqa: S310 - config URL
                document: Any = json.loads(response.read())
        except (OSError, ValueError) as exc:
            # Fails closed: without keys no token of the provider can be checked.
            raise Unavailable("the identity provider's keys cannot be read") from exc
        keys: dict[str, jwt.PyJWK] = {}
        for raw in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key type or curve we do not accept; others in the set still work
            if key.algorithm_name in ALGORITHMS:
                keys[raw["kid"]] = key
        return keys
