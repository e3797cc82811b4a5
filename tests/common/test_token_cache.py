"""The in-process memories of the hot path: TtlCache bounds and expiry, TokenVerifier never outliving a token."""

from __future__ import annotations

import time
import uuid

import pytest

from common import auth
from common.auth import TokenVerifier, mint_token
from common.errors import Unauthorized
from common.ttl_cache import TtlCache
from tests.helpers import wait_for

SECRET = "a-test-secret-of-32-characters!!"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(max_entries=10, ttl_s=5.0, clock=clock)
    cache.put("a", 1)
    clock.now += 4.9
    assert cache.get("a") == 1
    clock.now += 0.2
    assert cache.get("a") is None
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(max_entries=2, ttl_s=60.0, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3


def test_a_shorter_ttl_per_entry_wins_but_never_a_longer_one() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(max_entries=10, ttl_s=5.0, clock=clock)
    cache.put("short", 1, ttl_s=1.0)
    cache.put("long", 2, ttl_s=500.0)
    cache.put("gone", 3, ttl_s=0.0)
    clock.now += 1.5
    assert cache.get("short") is None and cache.get("long") == 2 and cache.get("gone") is None
    clock.now += 4.0
    assert cache.get("long") is None


def test_a_remembered_token_is_not_verified_again_until_the_entry_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = auth.verify_token

    def counting(token: str, secret: str, **kwargs: float) -> auth.Identity:
        calls.append(token)
        return real(token, secret, **kwargs)

    monkeypatch.setattr(auth, "verify_token", counting)
    clock = FakeClock()
    verifier = TokenVerifier(SECRET, ttl_s=60.0, clock=clock)
    token = mint_token(SECRET, role="admin")
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    assert len(calls) == 1
    clock.now += 61
    assert verifier.verify(token) == first
    assert len(calls) == 2


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(SECRET, ttl_s=3600.0)
    token = mint_token(SECRET, role="admin", now=time.time() - 3600 + 1.5, ttl_s=3600)  # exp in ~1.5 s
    assert verifier.verify(token).role == "admin"

    def refused() -> bool:
        try:
            verifier.verify(token)
        except Unauthorized as exc:
            return "expired" in str(exc)
        return False

    wait_for(refused, timeout_s=5, interval_s=0.1, message="the cached token refused after its exp")


def test_failures_are_not_remembered() -> None:
    verifier = TokenVerifier(SECRET)
    bad = mint_token("another-secret-of-32-characters!", role="admin")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="signature"):
            verifier.verify(bad)
    assert len(verifier.cache) == 0
    good = mint_token(SECRET, role="restaurant", restaurant_id=str(uuid.uuid4()))
    assert verifier.verify(good).role == "restaurant" and len(verifier.cache) == 1
