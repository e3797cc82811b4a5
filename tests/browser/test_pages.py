"""The live order board and the admin dashboard in real Chromium against real API and gateway processes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.support import Stack, Watched
from tests.fix_world import World
from tests.helpers import WsClient, http_json, seconds, wait_for

pytestmark = pytest.mark.needs_system("chromium")

# Records when each order's card first appears, by the page's clock (the same clock as this process).
RECORD_CARDS = """
() => {
  window.__cardSeen = {};
  new MutationObserver(() => {
    for (const card of document.querySelectorAll("[data-order-id]")) {
      const key = card.dataset.orderId + "/" + card.dataset.status;
      if (!(key in window.__cardSeen)) window.__cardSeen[key] = Date.now();
    }
  }).observe(document.body, {childList: true, subtree: true, attributes: true});
}
"""


def _create_order(stack: Stack, world: World, name: str) -> dict[str, Any]:
    status, _, body = http_json("POST", f"{stack.api}/api/orders", {
        "items": [{"product_id": world.products[0]["id"], "quantity": 2}], "customer_name": name,
    }, token=world.restaurant)
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def _move(stack: Stack, token: str, order_id: str, status: str) -> None:
    code, _, body = http_json("POST", f"{stack.api}/api/orders/{order_id}/status", {"status": status}, token=token)
    assert code == 200, body


def _open_board(open_page: Any, stack: Stack, token: str) -> Watched:
    watched: Watched = open_page(f"{stack.api}/board#token={token}")
    page = watched.page
    page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * 1000)
    wait_for(lambda: page.evaluate("window.dmsBoard && window.dmsBoard.loads()") >= 1, message="the first load")
    assert "token=" not in page.url  # the fragment is dropped once the token is in sessionStorage
    return watched


def _card(page: Any, order_id: str, column: str, *, timeout_s: float = 5.0) -> Any:
    return page.wait_for_selector(f'[data-cards="{column}"] [data-order-id="{order_id}"]',
                                  timeout=seconds(timeout_s) * 1000)


def test_a_new_order_appears_within_a_second_and_moves_with_its_status(
        open_page: Any, stack: Stack, world: World) -> None:
    watched = _open_board(open_page, stack, world.restaurant)
    page = watched.page
    page.evaluate(RECORD_CARDS)
    latencies = []
    for n in range(3):
        order = _create_order(stack, world, f"Guest {n}")
        committed = time.time()  # the POST has returned, so the order and its event are committed
        _card(page, order["id"], "pending")
        seen = page.evaluate(f"window.__cardSeen['{order['id']}/pending']")
        latencies.append(seen / 1000 - committed)
    print(f"board latency after commit: {[round(x * 1000) for x in latencies]} ms")
    assert max(latencies) < seconds(1.0), latencies
    card = page.locator(f'[data-order-id="{order["id"]}"]')  # a locator: cards are rebuilt on each change
    wait_for(lambda: "Guest 2" in (card.text_content() or "") and "2 \u00d7" in (card.text_content() or ""),
             message="the order's details")

    # Through every column to "done"; the driver's position shows while it is being delivered.
    for status in ("confirmed", "preparing", "ready"):
        _move(stack, world.admin, order["id"], status)
        _card(page, order["id"], status)
    assert http_json("POST", f"{stack.api}/api/drivers/me/status", {"status": "online"}, token=world.driver)[0] == 200
    code, _, body = http_json("POST", f"{stack.api}/api/orders/{order['id']}/assign", {"driver_id": world.driver_id},
                              token=world.admin)
    assert code == 200, body
    _move(stack, world.driver, order["id"], "delivering")
    _card(page, order["id"], "delivering")
    driver = page.locator(f'[data-driver="{world.driver_id}"]')
    # Subscribing to driver:DID happens when the card moves; post until a live point reaches the page.
    def position_shown() -> bool:
        http_json("POST", f"{stack.api}/api/drivers/me/locations",
                  {"points": [{"lat": 52.52001, "lng": 13.40495}]}, token=world.driver)
        return "52.52001, 13.40495" in (driver.text_content() or "")
    wait_for(position_shown, timeout_s=5, interval_s=0.3, message="the driver's position on the card")
    assert "s ago" in (driver.text_content() or "")
    page.screenshot(path=str(_artifact("board-delivering.png")), full_page=True)
    _move(stack, world.driver, order["id"], "delivered")
    _card(page, order["id"], "done")
    assert page.locator(f'[data-order-id="{order["id"]}"]').count() == 1
    assert page.locator('[data-cards="pending"] [data-order-id]').count() == 2
    watched.assert_clean(failed_loads_allowed=("/location",))  # 404 until the driver's first point


def test_the_board_recovers_missed_events_after_the_socket_drops(
        open_page: Any, stack: Stack, world: World) -> None:
    watched = _open_board(open_page, stack, world.restaurant)
    page = watched.page
    context = page.context
    first = _create_order(stack, world, "Before")
    _card(page, first["id"], "pending")

    context.set_offline(True)  # the reconnect attempts fail until the network is back
    page.evaluate("window.dmsBoard.drop()")
    page.wait_for_selector('#conn:not([data-state="connected"])', timeout=seconds(5) * 1000)
    missed = [_create_order(stack, world, f"Missed {n}") for n in range(3)]
    _move(stack, world.restaurant, first["id"], "cancelled")
    time.sleep(seconds(0.5))  # would be plenty for a live event; none may arrive while offline
    assert page.locator(f'[data-order-id="{missed[0]["id"]}"]').count() == 0
    assert page.get_attribute("#conn", "data-state") in ("reconnecting", "offline")

    context.set_offline(False)
    page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(15) * 1000)
    for order in missed:
        _card(page, order["id"], "pending")
    _card(page, first["id"], "done")
    for order in [first, *missed]:
        assert page.locator(f'[data-order-id="{order["id"]}"]').count() == 1
    assert page.evaluate("window.dmsBoard.loads()") == 1, "recovered by replay, not by reloading over REST"
    ids = page.evaluate("window.dmsBoard.orderIds()")
    assert len(ids) == len(set(ids)) == 4
    watched.assert_clean()


def test_the_admin_dashboard_follows_connections(open_page: Any, stack: Stack, world: World) -> None:
    watched: Watched = open_page(f"{stack.api}/admin#token={world.admin}")
    page = watched.page
    page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * 1000)
    row = f'#instances tr[data-instance="{stack.gateway_id}"]'
    page.wait_for_selector(row, timeout=seconds(10) * 1000)

    def connections() -> int:
        return int(page.locator(f"{row} td").nth(1).text_content() or "-1")

    def drivers() -> int:
        return int(page.locator('#by-role tr[data-role="driver"] td').text_content() or "-1")

    wait_for(lambda: connections() >= 1, message="the dashboard's own connection to be counted")
    before, drivers_before = connections(), drivers()
    clients = [WsClient.connect(stack.gateway_url, token=world.driver, origin=stack.api) for _ in range(3)]
    try:
        wait_for(lambda: connections() == before + 3 and drivers() >= drivers_before + 3, timeout_s=8,
                 interval_s=0.1, message="three more connections on the dashboard")
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: connections() == before, timeout_s=8, interval_s=0.1, message="the count to drop back")

    # Each performance panel shows numbers or says "unavailable"; one failing source does not blank the rest.
    for name in ("database", "cache", "slow", "alerts"):
        page.wait_for_selector(f'[data-body="{name}"] > *', timeout=seconds(10) * 1000)
    for name, path in (("database", "/api/performance/database"), ("cache", "/api/performance/cache"),
                       ("slow", "/api/performance/slow-queries?min_ms=100")):
        code = http_json("GET", f"{stack.api}{path}", token=world.admin)[0]
        text = page.locator(f'[data-body="{name}"]').text_content() or ""
        assert ("unavailable" in text) == (code != 200), (name, code, text)
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_the_admin_dashboard_explains_when_the_token_is_not_an_admins(
        open_page: Any, stack: Stack, world: World) -> None:
    watched: Watched = open_page(f"{stack.api}/admin#token={world.restaurant}")
    page = watched.page
    message = page.wait_for_selector("#message:not([hidden])", timeout=seconds(5) * 1000)
    assert "needs an admin token" in (message.text_content() or "")
    assert page.locator("#main").is_hidden()
    watched.assert_clean()


def test_without_a_token_the_board_asks_for_one(open_page: Any, stack: Stack, world: World) -> None:
    watched: Watched = open_page(f"{stack.api}/board")
    page = watched.page
    page.wait_for_selector("#token-form:not([hidden])", timeout=seconds(5) * 1000)
    assert page.get_attribute("#conn", "data-state") == "offline"
    page.fill("#token-input", world.restaurant)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * 1000)
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('dms.token')") == world.restaurant
    watched.assert_clean()
    for log in stack.logs:  # the token travels in the fragment, a header and the handshake, never into logs
        assert world.restaurant not in log.read_text(errors="replace"), log.name


def _artifact(name: str) -> Any:
    from tests.browser.support import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def test_the_pages_connect_with_a_ticket_not_the_token(open_page: Any, stack: Stack, world: World) -> None:
    """Contract section 6: a bearer token never appears in a WebSocket URL (proxies log URLs)."""
    watched = _open_board(open_page, stack, world.restaurant)
    page = watched.page
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.reload()  # the token is in sessionStorage now; the board connects again
    page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * 1000)
    wait_for(lambda: urls, message="the board's WebSocket")
    assert all("ticket=" in url and "token=" not in url and world.restaurant not in url for url in urls), urls
    watched.assert_clean()
