"""dms-client.js in real Chromium against real gateways: reconnects without loss, batch frames, `unsubscribed`
with a reason, the offline location buffer, and (where the server has them) tickets, `auth` refresh and
Retry-After."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.auth import mint_token
from devstack import embedded
from gateway.protocol import MAX_RATE_VIOLATIONS, RATE_BURST
from tests.browser.support import Stack
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World, stored_latitudes, write_events
from tests.gateway.test_privacy import Rest, new_driver
from tests.helpers import Process, WsClient, http_json, seconds, wait_for

MS = 1000

# Loads the module into a page without the pages' CSP (the pages' own tests run it under theirs) and keeps
# everything the client reports in window.seen.
START = """async ([url, options]) => {
  const { DmsClient } = await import("/static/dms-client.js");
  window.seen = { events: [], states: [], errors: [], unsubscribed: [], frames: 0 };
  const client = new DmsClient(url, options);
  client.on("state", (state, detail) => window.seen.states.push([state, detail]));
  client.on("error", (frame) => window.seen.errors.push(frame));
  client.on("unsubscribed", (frame) => window.seen.unsubscribed.push(frame));
  window.client = client;
}"""
SUBSCRIBE = "(channel) => window.client.subscribe(channel, (e) => window.seen.events.push(e))"


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(bypass_csp=True)
    opened = context.new_page()
    opened.goto(f"{stack.api}/api/openapi.json")
    try:
        yield opened
    finally:
        context.close()


def _start(page: Any, url: str, **options: Any) -> None:
    page.evaluate(START, [url, options])
    page.wait_for_function("window.client && window.client.connected", timeout=seconds(10) * MS)


def _events(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.seen.events")  # type: ignore[no-any-return]


def _gateway(infra: Infra, stack: Stack, port: int, logs: Path) -> Process:
    process = Process("gateway", infra.env(GATEWAY_PORT=str(port), GATEWAY_ID=f"gw-client-{port}",
                                           ALLOWED_ORIGINS=stack.api, WS_MAX_CONNECTIONS="1"), logs)
    process.wait_http_ok(f"http://127.0.0.1:{port}/health")
    return process


def test_a_killed_gateway_loses_no_event(page: Any, stack: Stack, infra: Infra, world: World,
                                         tmp_path: Path) -> None:
    port = embedded.free_port()
    gateway = _gateway(infra, stack, port, tmp_path / "first.log")
    try:
        channel = f"restaurant:{world.restaurant_id}"
        _start(page, f"ws://127.0.0.1:{port}/ws", token=world.restaurant, base=100, cap=1000)
        page.evaluate(SUBSCRIBE, channel)
        page.wait_for_function(f"window.client.lastId('{channel}') !== null", timeout=seconds(10) * MS)
        before = write_events(infra.database_url, channel, 3)
        wait_for(lambda: len(_events(page)) >= 3, message="the first three events")
        gateway.stop(sig=signal.SIGKILL)
        page.wait_for_function("!window.client.connected", timeout=seconds(10) * MS)
        missed = write_events(infra.database_url, channel, 4)  # while no gateway runs
        gateway = _gateway(infra, stack, port, tmp_path / "second.log")
        after = write_events(infra.database_url, channel, 2)
        wanted = before + missed + after
        wait_for(lambda: [e["id"] for e in _events(page)] == wanted, timeout_s=20,
                 message="every event once, in order")
        states = [state for state, _ in page.evaluate("window.seen.states")]
        assert "reconnecting" in states and states[-1] == "connected"
        delays = [d["delayMs"] for s, d in page.evaluate("window.seen.states") if s == "reconnecting" and d]
        assert delays and all(0 <= d <= 1000 for d in delays), delays  # full jitter under the cap
    finally:
        gateway.stop()


def test_batch_frames_are_unpacked_in_order(page: Any, stack: Stack, infra: Infra, world: World) -> None:
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    channel = f"restaurant:{world.restaurant_id}"
    _start(page, stack.gateway_url, token=world.restaurant, batchMs=100)
    page.evaluate(SUBSCRIBE, channel)
    page.wait_for_function(f"window.client.lastId('{channel}') !== null", timeout=seconds(10) * MS)
    import redis as redis_lib

    from common.events import publish_ephemeral

    publisher = redis_lib.Redis.from_url(infra.redis_url)
    for n in range(5):
        frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.batch",
                            "data": {"n": n}, "ts": "2026-01-01T00:00:00Z"})
        publish_ephemeral(publisher, channel, frame)
    publisher.close()
    wait_for(lambda: [e["data"].get("n") for e in _events(page) if e["event"] == "test.batch"] == list(range(5)),
             message="five events in order")
    assert any('"type": "batch"' in f or '"type":"batch"' in f for f in frames), frames[-5:]


def test_a_subscription_ended_by_the_server_says_why(page: Any, stack: Stack, client: Any, world: World) -> None:
    rest = Rest(client, world)
    driver_id, _ = new_driver(rest)
    order_id = rest.assigned_order(world.restaurant_id, driver_id)
    channel = f"driver:{driver_id}"
    _start(page, stack.gateway_url, token=world.restaurant)
    page.evaluate(SUBSCRIBE, channel)
    page.wait_for_function(f"window.client.channels.has('{channel}') && window.client.lastId('{channel}') !== null",
                           timeout=seconds(10) * MS)
    rest.deliver(order_id)
    ended = page.wait_for_function("window.seen.unsubscribed[0]", timeout=seconds(10) * MS).json_value()
    assert ended == {"type": "unsubscribed", "channel": channel, "ref": None, "reason": "forbidden"}
    assert not page.evaluate(f"window.client.channels.has('{channel}')")  # not resubscribed after a reconnect


def test_a_rate_limited_subscribe_is_sent_again_and_a_forbidden_one_is_not(page: Any, stack: Stack, infra: Infra,
                                                                            world: World) -> None:
    sent: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(str(payload)))))
    channel, forbidden = f"restaurant:{world.restaurant_id}", f"restaurant:{world.other_restaurant_id}"
    _start(page, stack.gateway_url, token=world.restaurant, base=50, cap=400)
    # Past the gateway's frame burst at once: the subscribe behind the pings is refused with rate_limited.
    # Ten over it, well under the refusals that close a connection.
    assert MAX_RATE_VIOLATIONS > 10 + 5
    page.evaluate("""([channel, forbidden, pings]) => {
      for (let n = 0; n < pings; n++) window.client.send({ type: "ping", ref: "p" + n });
      window.client.subscribe(channel, (e) => window.seen.events.push(e));
      window.client.subscribe(forbidden, () => {});
    }""", [channel, forbidden, int(RATE_BURST) + 10])
    page.wait_for_function(f"window.client.lastId('{channel}') !== null", timeout=seconds(15) * MS)
    errors = page.evaluate("window.seen.errors")
    assert ("rate_limited", channel) in [(e["code"], e["channel"]) for e in errors], errors
    subscribes = [f for f in sent if f.get("type") == "subscribe" and f["channel"] == channel]
    assert len(subscribes) >= 2 and len({f["ref"] for f in subscribes}) == len(subscribes)  # sent again
    assert not [s for s, _ in page.evaluate("window.seen.states") if s == "reconnecting"]  # on the same socket
    write_events(infra.database_url, channel, 1, event="test.after_retry")
    wait_for(lambda: any(e["event"] == "test.after_retry" for e in _events(page)), message="an event after the retry")
    # The forbidden one was refused (as rate_limited first, maybe, then as forbidden) and never sent after that.
    page.wait_for_function(f"window.seen.errors.some((e) => e.code === 'forbidden' && e.channel === '{forbidden}')",
                           timeout=seconds(15) * MS)
    refused_at = len([f for f in sent if f.get("type") == "subscribe" and f["channel"] == forbidden])
    # A retry would leave within the client's cap (0.4 s) of the refusal; a ping sent once that window is
    # over leaves after it, so the frames before the ping say whether one went.
    window_over = time.monotonic() + 0.4
    wait_for(lambda: time.monotonic() > window_over, message="the retry window to pass")
    assert page.evaluate("window.client.send({ type: 'ping', ref: 'probe' })")
    wait_for(lambda: any(f.get("ref") == "probe" for f in sent), message="the probe ping")
    before_probe = sent[: next(n for n, f in enumerate(sent) if f.get("ref") == "probe")]
    assert len([f for f in before_probe if f.get("type") == "subscribe" and f["channel"] == forbidden]) == refused_at


def test_locations_sent_offline_reach_rest_in_order(page: Any, stack: Stack, client: Any, infra: Infra,
                                                      world: World) -> None:
    driver_id, token = new_driver(Rest(client, world))
    _start(page, stack.gateway_url, token=token, base=100, cap=500)
    assert page.evaluate("window.client.sendLocation({lat: 52.0, lng: 13.0})") == "sent"
    # Acknowledged: stored, so it is not kept for a resend (an unacknowledged point would be).
    page.wait_for_function("window.client.unacked.size === 0", timeout=seconds(5) * MS)
    page.context.set_offline(True)
    page.evaluate("window.client.drop()")
    page.wait_for_function("!window.client.connected", timeout=seconds(5) * MS)
    for n in range(1, 4):
        assert page.evaluate(f"window.client.sendLocation({{lat: 52.0 + {n} / 100, lng: 13.0}})") == "buffered"
    kept = json.loads(page.evaluate("localStorage.getItem('dms.locations')"))
    assert [p["lat"] for p in kept] == [52.01, 52.02, 52.03]
    page.context.set_offline(False)
    page.wait_for_function("window.client.connected && window.client.pendingLocations() === 0",
                           timeout=seconds(15) * MS)
    assert page.evaluate("localStorage.getItem('dms.locations')") is None


    wait_for(lambda: stored_latitudes(infra.database_url, driver_id) == [52.0, 52.01, 52.02, 52.03],
             message="four points, in order")


def _ticket_endpoint(stack: Stack, token: str) -> bool:
    return http_json("POST", f"{stack.api}/api/realtime/ticket", {}, token=token)[0] != 404


def test_the_client_connects_with_a_ticket(page: Any, stack: Stack, world: World) -> None:
    assert _ticket_endpoint(stack, world.restaurant), "POST /api/realtime/ticket answered 404"
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    _start(page, stack.gateway_url, token=world.restaurant)
    assert urls and all("ticket=" in u and "token=" not in u and world.restaurant not in u for u in urls), urls


def test_get_token_refreshes_before_expiry(page: Any, stack: Stack, world: World) -> None:
    minted: list[str] = []

    def fresh_token() -> str:
        minted.append(mint_token(JWT_SECRET, role="restaurant", sub=_sub(world.restaurant),
                                 restaurant_id=world.restaurant_id, ttl_s=8))
        return minted[-1]

    page.expose_function("freshToken", fresh_token)
    page.evaluate(START.replace("new DmsClient(url, options)",
                                "new DmsClient(url, {...options, getToken: () => window.freshToken()})"),
                  [stack.gateway_url, {"refreshBeforeMs": 5000}])
    page.wait_for_function("window.client && window.client.connected", timeout=seconds(10) * MS)
    # Past the first token's 8 s: only a refreshed connection is still the same one. The wait runs
    # Playwright's loop, which answers the page's calls of window.freshToken (a sleep would not).
    page.wait_for_timeout(seconds(12) * MS)
    assert len(minted) >= 2
    states = [state for state, _ in page.evaluate("window.seen.states")]
    assert states.count("connected") == 1 and page.evaluate("window.client.connected"), states


def _sub(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def test_retry_after_is_honoured(page: Any, stack: Stack, infra: Infra, world: World, tmp_path: Path) -> None:
    port = embedded.free_port()
    gateway = _gateway(infra, stack, port, tmp_path / "gateway.log")  # WS_MAX_CONNECTIONS=1
    holder = WsClient.connect(f"ws://127.0.0.1:{port}/ws", token=world.admin, origin=stack.api)
    try:
        code, headers, _ = http_json("GET", f"http://127.0.0.1:{port}/ws", None)
        assert code == 503, code  # admission: the gateway is full
        retry_after = float(headers["Retry-After"])
        _start_refused(page, f"ws://127.0.0.1:{port}/ws", world.restaurant)
        waited = wait_for(lambda: [d for s, d in page.evaluate("window.seen.states") if s == "reconnecting"],
                          message="a refused attempt")
        # Each refusal draws its own Retry-After; the client waits at least the one its probe read.
        assert waited[0]["retryAfterMs"] >= 1000 and waited[0]["delayMs"] >= waited[0]["retryAfterMs"]
        holder.close()
        page.wait_for_function("window.client.connected", timeout=seconds(retry_after + 20) * MS)
    finally:
        holder.close()
        gateway.stop()


def _start_refused(page: Any, url: str, token: str) -> None:
    page.evaluate(START, [url, {"token": token, "probe": True, "base": 100, "cap": 200}])


RAW_SOCKET = """([url, channel]) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  window.raw = { messages: [] };
  ws.onmessage = (message) => window.raw.messages.push(JSON.parse(message.data));
  ws.onopen = () => { ws.send(JSON.stringify({ type: "subscribe", channel, ref: "s" })); resolve(ws.extensions); };
  ws.onerror = () => reject(new Error("the WebSocket failed"));
})"""


def test_chromium_negotiates_permessage_deflate(page: Any, stack: Stack, infra: Infra, world: World) -> None:
    """A browser offers permessage-deflate by itself; it gets our answer, its own (compressed) subscribe
    is understood, and a big event, compressed, reads as the same JSON."""
    import redis as redis_lib

    from common.events import publish_ephemeral

    channel = f"restaurant:{world.restaurant_id}"
    extensions = page.evaluate(RAW_SOCKET, [f"{stack.gateway_url}?token={world.restaurant}", channel])
    assert extensions == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    page.wait_for_function("window.raw.messages.some((m) => m.type === 'subscribed')", timeout=seconds(10) * MS)
    note = "a long note " * 60
    publisher = redis_lib.Redis.from_url(infra.redis_url)
    publish_ephemeral(publisher, channel, json.dumps({"type": "event", "channel": channel, "id": None,
                                                      "event": "test.deflate", "data": {"note": note},
                                                      "ts": "2026-01-01T00:00:00Z"}))
    publisher.close()
    page.wait_for_function("window.raw.messages.some((m) => m.event === 'test.deflate')", timeout=seconds(10) * MS)
    got = page.evaluate("window.raw.messages.filter((m) => m.event === 'test.deflate')")
    assert [m["data"]["note"] for m in got] == [note]
