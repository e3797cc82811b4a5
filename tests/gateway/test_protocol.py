"""The protocol module without any server: every frame type, error code and limit."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway import closes
from gateway.protocol import (
    CLOSE_POLICY,
    MAX_RATE_VIOLATIONS,
    Close,
    Location,
    Reply,
    Session,
    Subscribe,
    TokenBucket,
    Unsubscribe,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RID = str(uuid.uuid4())


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def tick(self, dt: float = 0.1) -> float:
        self.t += dt
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def send(session: Session, clock: Clock, frame: object, *, dt: float = 0.1) -> list:  # type: ignore[type-arg]
    text = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    return session.receive(text, now_s=clock.tick(dt), now=NOW)


def only_error(actions: list) -> dict:  # type: ignore[type-arg]
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    body = actions[0].body
    assert body["type"] == "error"
    return body  # type: ignore[no-any-return]


def test_ping_gets_pong_with_ref_and_time(clock: Clock) -> None:
    (reply,) = send(Session(role="admin"), clock, {"type": "ping", "ref": "p1"})
    assert reply.body == {"type": "pong", "ref": "p1", "server_time": "2026-01-01T12:00:00.000000Z"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        (b"\x00binary", "bad_request"),
        ({"type": 5}, "bad_request"),
        ({"ref": "x"}, "bad_request"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "ping", "ref": "x" * 65}, "bad_request"),
        ({"type": "ping", "ref": 12}, "bad_request"),
        ({"type": "subscribe"}, "bad_request"),
        ({"type": "subscribe", "channel": "nope"}, "invalid_channel"),
        ({"type": "subscribe", "channel": "restaurant:not-a-uuid"}, "invalid_channel"),
        ({"type": "subscribe", "channel": f"restaurant:{RID}", "since": -1}, "bad_request"),
        ({"type": "subscribe", "channel": f"restaurant:{RID}", "since": "10"}, "bad_request"),
        ({"type": "subscribe", "channel": f"restaurant:{RID}", "since": True}, "bad_request"),
        ({"type": "unsubscribe", "channel": "x:y"}, "invalid_channel"),
    ],
)
def test_malformed_frames_get_an_error_and_the_connection_stays(clock: Clock, frame: object, code: str) -> None:
    session = Session(role="admin")
    assert only_error(send(session, clock, frame))["code"] == code
    (reply,) = send(session, clock, {"type": "ping"})
    assert reply.body["type"] == "pong"


def test_subscribe_and_unsubscribe_flow(clock: Clock) -> None:
    session = Session(role="admin")
    (action,) = send(session, clock, {"type": "subscribe", "channel": f"restaurant:{RID.upper()}", "since": 7,
                                      "ref": "s"})
    assert action == Subscribe(f"restaurant:{RID}", 7, "s")
    session.subscribe_done(action.channel, ok=True)
    assert set(session.subscriptions) == {f"restaurant:{RID}"}
    (again,) = send(session, clock, {"type": "subscribe", "channel": f"restaurant:{RID}"})
    assert isinstance(again, Subscribe)  # the server answers `subscribed` without counting twice
    (gone,) = send(session, clock, {"type": "unsubscribe", "channel": f"restaurant:{RID}", "ref": "u"})
    assert gone == Unsubscribe(f"restaurant:{RID}", "u") and not session.subscriptions


def test_the_subscription_cap(clock: Clock) -> None:
    session = Session(role="admin", max_subscriptions=3)
    for _ in range(3):
        (action,) = send(session, clock, {"type": "subscribe", "channel": f"order:{uuid.uuid4()}"})
        session.subscribe_done(action.channel, ok=True)
    body = only_error(send(session, clock, {"type": "subscribe", "channel": "orders", "ref": "over"}))
    assert body["code"] == "subscription_limit" and body["ref"] == "over"
    held = next(iter(session.subscriptions))
    (resubscribe,) = send(session, clock, {"type": "subscribe", "channel": held})
    assert isinstance(resubscribe, Subscribe)
    session.subscribe_done(resubscribe.channel, ok=False)  # a refused subscribe frees its slot
    assert len(session.subscriptions) == 3


def test_pending_subscribes_count_against_the_cap(clock: Clock) -> None:
    session = Session(role="admin", max_subscriptions=1)
    send(session, clock, {"type": "subscribe", "channel": "orders"})
    assert only_error(send(session, clock, {"type": "subscribe", "channel": f"order:{uuid.uuid4()}"}))["code"] == (
        "subscription_limit")


def test_rate_limit_then_close(clock: Clock) -> None:
    session = Session(role="admin")
    replies = [send(session, clock, {"type": "ping"}, dt=0.0) for _ in range(40)]
    assert all(r[0].body["type"] == "pong" for r in replies)
    limited = only_error(send(session, clock, {"type": "ping", "ref": "late"}, dt=0.0))
    assert limited["code"] == "rate_limited" and limited["ref"] == "late"
    for _ in range(MAX_RATE_VIOLATIONS - 1):
        send(session, clock, {"type": "ping"}, dt=0.0)
    (close,) = send(session, clock, {"type": "ping"}, dt=0.0)
    assert close == Close(closes.TOO_MANY_FRAMES) and (close.code, close.reason) == (CLOSE_POLICY, "too many frames")


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=20, burst=40)
    assert sum(bucket.take(0.0) for _ in range(50)) == 40
    assert sum(bucket.take(1.0) for _ in range(50)) == 20


def test_locations_only_from_drivers_and_validated(clock: Clock) -> None:
    assert only_error(send(Session(role="restaurant"), clock, {"type": "location", "lat": 1, "lng": 2}))[
        "code"] == "forbidden"
    driver = Session(role="driver")
    (point,) = send(driver, clock, {"type": "location", "lat": 52.5, "lng": 13.4, "heading": 90, "speed": 3.5,
                                    "ref": "g"})
    assert isinstance(point, Location) and point.point.recorded_at == NOW and point.ref == "g"
    for bad in ({"lat": 91, "lng": 0}, {"lat": 0}, {"lat": "1", "lng": 2}, {"lat": 0, "lng": 0, "speed": -1},
                {"lat": 0, "lng": 0, "heading": 360}, {"lat": 0, "lng": 0, "recorded_at": "yesterday"},
                {"lat": 0, "lng": 0, "recorded_at": (NOW + timedelta(hours=1)).isoformat()},
                {"lat": 0, "lng": 0, "recorded_at": "2026-01-01T11:59:00"}):
        assert only_error(send(driver, clock, {"type": "location", **bad}))["code"] == "bad_request", bad
    nan_frame = '{"type": "location", "lat": NaN, "lng": 0}'
    assert only_error(send(driver, clock, nan_frame))["code"] == "bad_request"

