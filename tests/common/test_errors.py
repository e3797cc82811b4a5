"""DmsError renders the contract's error body and the headers its status calls for."""

from __future__ import annotations

from common.errors import BadRequest, DmsError, RateLimited, Unauthorized, Unavailable


def test_body_is_code_message_details() -> None:
    exc = BadRequest("no", details={"field": "x"})
    assert exc.body() == {"error": {"code": "bad_request", "message": "no", "details": {"field": "x"}}}
    assert exc.headers() == {}


def test_retry_after_on_429_and_503() -> None:
    assert RateLimited("slow down", retry_after_s=7).headers() == {"Retry-After": "7"}
    assert Unavailable("down").headers() == {"Retry-After": "1"}


def test_401_names_the_scheme() -> None:
    assert Unauthorized("who?").headers() == {"WWW-Authenticate": "Bearer"}


def test_an_unexpected_error_is_internal() -> None:
    assert DmsError("boom").body()["error"]["code"] == "internal"

