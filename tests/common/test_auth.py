from __future__ import annotations

import time
import uuid

import jwt
import pytest

from common.auth import bearer_token, mint_token, verify_token
from common.errors import Unauthorized

SECRET = "unit-secret-0123456789abcdef0123"


def test_a_minted_token_verifies() -> None:
    rid = str(uuid.uuid4())
    who = verify_token(mint_token(SECRET, role="restaurant", restaurant_id=rid), SECRET)
    assert who.role == "restaurant" and who.restaurant_id == rid and not who.read_only


@pytest.mark.parametrize(
    ("token_factory", "reason"),
    [
        (lambda: "", "missing"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: mint_token("another-secret-0123456789abcdef", role="admin"), "signature"),
        (lambda: mint_token(SECRET, role="admin", now=time.time() - 7200, ttl_s=60), "expired"),
        (lambda: jwt.encode({"sub": str(uuid.uuid4()), "role": "admin", "exp": time.time() + 60}, None,
                            algorithm="none"), "algorithm|malformed"),
        (lambda: jwt.encode({"sub": str(uuid.uuid4()), "role": "root", "exp": time.time() + 60}, SECRET),
         "unknown"),
        (lambda: jwt.encode({"sub": str(uuid.uuid4()), "role": "admin"}, SECRET), "exp"),
        (lambda: jwt.encode({"sub": "alice", "role": "admin", "exp": time.time() + 60}, SECRET), "UUID"),
        (lambda: jwt.encode({"sub": str(uuid.uuid4()), "role": "restaurant", "exp": time.time() + 60}, SECRET),
         "restaurant_id"),
    ],
    ids=["missing", "garbage", "bad-signature", "expired", "alg-none", "unknown-role", "no-exp", "sub-not-uuid",
         "restaurant-without-id"],
)
def test_bad_tokens_are_refused_with_a_reason(token_factory, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized, match=reason):
        verify_token(token_factory(), SECRET)


def test_minting_refuses_incomplete_claims() -> None:
    with pytest.raises(ValueError, match="restaurant-id"):
        mint_token(SECRET, role="demo")
    with pytest.raises(ValueError, match="unknown role"):
        mint_token(SECRET, role="root")


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def", "abc.def"), ("bearer  abc.def ", "abc.def"), ("BEARER abc", "abc"), ("", ""),
     ("Bearer", ""), ("Bearer   ", ""), ("Basic abc", ""), ("abc.def", "")],
)
def test_bearer_token_takes_only_the_bearer_scheme(header: str, token: str) -> None:
    assert bearer_token(header) == token
