"""The protocol core's clock rules with a fake clock: pings, 1011, 4001, and the close timeout."""

from __future__ import annotations

from gateway import closes
from gateway.framing import CloseCode
from gateway.protocol import Abort, Close, SendPing, Session


def session(**kwargs: float) -> Session:
    s = Session(role="admin", ping_interval_s=30.0, ping_timeout_s=10.0, close_timeout_s=5.0, **kwargs)
    s.start(0.0)
    return s


def test_a_ping_is_due_one_interval_after_start_and_after_each_pong() -> None:
    s = session()
    assert s.tick(29.9, 0.0) == []
    assert s.tick(30.0, 0.0) == [SendPing()]
    assert s.tick(35.0, 0.0) == []  # waiting for the pong: no second ping
    s.pong(36.0)
    assert s.tick(65.9, 0.0) == []
    assert s.tick(66.0, 0.0) == [SendPing()]


def test_no_pong_within_the_timeout_closes_with_1011() -> None:
    s = session()
    assert s.tick(30.0, 0.0) == [SendPing()]
    assert s.tick(39.9, 0.0) == []
    (close,) = s.tick(40.0, 0.0)
    assert close == Close(closes.PING_TIMEOUT) and (close.code, close.reason) == (CloseCode.INTERNAL,
                                                                                   "keepalive ping timeout")


def test_an_expired_token_closes_with_4001() -> None:
    s = session(expires_at=1_000.0)
    assert s.tick(1.0, 999.9) == []
    (close,) = s.tick(1.0, 1_000.0)
    assert close == Close(closes.TOKEN_EXPIRED) and (close.code, close.reason) == (CloseCode.TOKEN_EXPIRED,
                                                                                    "token expired")


def test_after_our_close_only_the_close_timeout_counts() -> None:
    s = session(expires_at=1_000.0)
    s.close_sent(50.0)
    assert s.tick(54.9, 2_000.0) == []  # no 4001, no ping: the close is under way
    assert s.tick(55.0, 2_000.0) == [Abort("no answer to our close frame")]
    s.close_sent(60.0)  # a second close does not restart the clock
    assert s.close_sent_at == 50.0


def test_a_pong_without_a_ping_changes_nothing() -> None:
    s = session()
    s.pong(10.0)
    assert s.tick(30.0, 0.0) == [SendPing()]
