"""In-band token refresh (contract section 6): `auth` -> `authed` or `invalid_token`, with a real gateway."""

from __future__ import annotations

import struct
import time
import uuid
from datetime import UTC, datetime

import websocket

from common.auth import verify_token
from gateway.protocol import Auth, Reply, Session
from tests.fix_infra import JWT_SECRET
from tests.fix_servers import SharedGateway
from tests.fix_world import World
from tests.helpers import WsClient, seconds


def _open(gateway: SharedGateway, token: str) -> WsClient:
    conn = WsClient.connect(gateway["url"], token=token)
    assert conn.recv()["type"] == "welcome"
    return conn


def _close_code(conn: WsClient, *, timeout_s: float) -> int:
    """Read until the server's close frame; return its code."""
    conn.ws.settimeout(seconds(timeout_s))
    while True:
        opcode, frame = conn.ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int(struct.unpack("!H", frame.data[:2])[0])


def test_the_protocol_turns_an_auth_frame_into_an_action() -> None:
    session = Session(role="admin")
    now = datetime.now(UTC)
    assert session.receive('{"type":"auth","token":"a.b.c","ref":"r1"}', now_s=0.0, now=now) == [Auth("a.b.c", "r1")]
    for bad in ('{"type":"auth","ref":"r2"}', '{"type":"auth","token":5,"ref":"r2"}', '{"type":"auth","token":""}'):
        (reply,) = session.receive(bad, now_s=0.0, now=now)
        assert isinstance(reply, Reply) and reply.body["code"] == "invalid_token"
    session.reauthenticated(1234.0)
    assert session.expires_at == 1234.0


def test_a_refresh_moves_the_expiry_and_keeps_the_connection(gateway: SharedGateway) -> None:
    sub = str(uuid.uuid4())
    first_ttl_s = 1.0 + seconds(1.0)  # long enough for the refresh to land first on a loaded machine
    conn = _open(gateway, World.token("admin", sub=sub, ttl_s=first_ttl_s))
    fresh = World.token("admin", sub=sub, ttl_s=3600)
    reply = conn.request({"type": "auth", "token": fresh})
    expected = datetime.fromtimestamp(verify_token(fresh, JWT_SECRET).expires_at, UTC)
    assert reply["type"] == "authed"
    assert datetime.fromisoformat(reply["expires_at"].replace("Z", "+00:00")) == expected
    time.sleep(first_ttl_s + 1.5)  # past the first token's expiry (whole seconds in `exp`) and a timer tick
    assert conn.request({"type": "ping"})["type"] == "pong"  # not closed with 4001
    conn.close()


def test_a_refused_refresh_keeps_the_old_token_and_its_4001(gateway: SharedGateway, world: World) -> None:
    sub = str(uuid.uuid4())
    conn = _open(gateway, World.token("admin", sub=sub, ttl_s=1.0 + seconds(2.0)))
    refused = [
        "not-a-jwt",
        World.token("admin", ttl_s=3600),  # another user
        World.token("driver", sub=sub, ttl_s=3600),  # another role
        World.token("admin", sub=sub, ttl_s=-10),  # expired
        World.token("admin", sub=sub, ttl_s=3600).rsplit(".", 1)[0] + ".AAAA",  # bad signature
    ]
    for token in refused:
        reply = conn.request({"type": "auth", "token": token})
        assert reply["type"] == "error" and reply["code"] == "invalid_token", reply
        assert token not in reply["message"]
    assert _close_code(conn, timeout_s=15) == 4001
    conn.close()


def test_subscriptions_the_new_claims_do_not_allow_end_as_forbidden(gateway: SharedGateway, world: World) -> None:
    sub = str(uuid.uuid4())
    conn = _open(gateway, World.token("restaurant", sub=sub, restaurant_id=world.restaurant_id))
    assert conn.subscribe(f"restaurant:{world.restaurant_id}")["type"] == "subscribed"
    assert conn.subscribe("order:" + str(uuid.uuid4()))["code"] == "forbidden"
    # Same user and role, now for the other restaurant: its old board is no longer its to watch.
    moved = World.token("restaurant", sub=sub, restaurant_id=world.other_restaurant_id)
    assert conn.request({"type": "auth", "token": moved})["type"] == "authed"
    ended = conn.recv_until(lambda f: f.get("type") == "unsubscribed")
    assert ended == {"type": "unsubscribed", "channel": f"restaurant:{world.restaurant_id}", "ref": None,
                     "reason": "forbidden"}
    assert conn.subscribe(f"restaurant:{world.other_restaurant_id}")["type"] == "subscribed"
    conn.close()


def test_a_refresh_that_changes_nothing_keeps_every_subscription(gateway: SharedGateway, world: World) -> None:
    sub = str(uuid.uuid4())
    conn = _open(gateway, World.token("restaurant", sub=sub, restaurant_id=world.restaurant_id))
    assert conn.subscribe(f"restaurant:{world.restaurant_id}")["type"] == "subscribed"
    again = World.token("restaurant", sub=sub, restaurant_id=world.restaurant_id, ttl_s=7200)
    assert conn.request({"type": "auth", "token": again})["type"] == "authed"
    # Still subscribed: subscribing again answers `subscribed` without a new subscription.
    assert conn.request({"type": "unsubscribe", "channel": f"restaurant:{world.restaurant_id}"})["type"] == \
        "unsubscribed"
    assert all(f.get("type") != "unsubscribed" or f.get("ref") is not None for f in conn.seen)
    conn.close()
