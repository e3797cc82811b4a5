"""The admin page's dispatch panels in real Chromium: the fleet live, assigning, the chart, the request budget."""

from __future__ import annotations

import csv
from collections import Counter
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.browser.support import RECORD_VIOLATIONS, Stack, ok, open_admin
from tests.fix_world import World
from tests.helpers import seconds, wait_for

pytestmark = pytest.mark.needs_system("chromium")
MS = 1000


def _located(stack: Stack, world: World, lat: float, lng: float) -> None:
    ok("POST", f"{stack.api}/api/drivers/me/locations", {"points": [{"lat": lat, "lng": lng}]}, token=world.driver,
        expect=202)


def test_the_drivers_panel_follows_a_driver_live(open_page: Any, stack: Stack, world: World) -> None:
    ok("POST", f"{stack.api}/api/drivers/me/status", {"status": "online"}, token=world.driver)
    _located(stack, world, 52.5200, 13.4050)
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    row = f'#drivers tr[data-driver-id="{world.driver_id}"]'
    page.wait_for_selector(f'{row}[data-status="online"]', timeout=seconds(10) * MS)
    wait_for(lambda: "52.52000, 13.40500" in (page.locator(f"{row} .position").text_content() or ""),
             message="the position read over REST")
    # Its own dot, or a cluster's member when the session's other drivers stand close by.
    dot = page.locator(f'#fleet-dots circle[data-driver-id="{world.driver_id}"]')
    clustered = page.locator(f'#fleet-dots g.cluster[data-driver-ids~="{world.driver_id}"]')
    wait_for(lambda: dot.count() + clustered.count() == 1, message="the driver on the map")

    # Live from the `drivers` channel, no reload: a new position, then a status change.
    _located(stack, world, 52.5301, 13.3902)
    wait_for(lambda: "52.53010, 13.39020" in (page.locator(f"{row} .position").text_content() or ""),
             timeout_s=5, message="the new position, live")
    assert dot.count() + clustered.count() == 1
    ok("POST", f"{stack.api}/api/drivers/me/status", {"status": "on_break"}, token=world.driver)
    page.wait_for_selector(f'{row}[data-status="on_break"]', timeout=seconds(5) * MS)
    if dot.count():  # a cluster shows a count, not its members' states
        page.wait_for_selector(f'#fleet-dots circle.status-on_break[data-driver-id="{world.driver_id}"]',
                               timeout=seconds(5) * MS)
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_an_order_is_assigned_from_the_page(open_page: Any, stack: Stack, world: World) -> None:
    ok("POST", f"{stack.api}/api/drivers/me/status", {"status": "online"}, token=world.driver)
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    page.wait_for_selector(f'#drivers tr[data-driver-id="{world.driver_id}"]', timeout=seconds(10) * MS)
    order = ok("POST", f"{stack.api}/api/orders", {"items": [{"product_id": world.products[0]["id"], "quantity": 1}]},
                token=world.restaurant, expect=201)
    ok("POST", f"{stack.api}/api/orders/{order['id']}/status", {"status": "confirmed"}, token=world.admin)
    waiting = f'#awaiting tr[data-order-id="{order["id"]}"]'
    page.wait_for_selector(waiting, timeout=seconds(5) * MS)  # live from the `orders` channel

    page.locator(f"{waiting} button.assign").click()  # no driver chosen yet: said so, nothing sent
    page.wait_for_selector(f"{waiting} .row-error", timeout=seconds(5) * MS)
    page.select_option(f"{waiting} select", world.driver_id)
    page.locator(f"{waiting} button.assign").click()
    page.wait_for_selector(waiting, state="detached", timeout=seconds(5) * MS)
    assert ok("GET", f"{stack.api}/api/orders/{order['id']}", token=world.admin)["driver_id"] == world.driver_id
    active = page.locator(f'#drivers tr[data-driver-id="{world.driver_id}"] .active-orders')
    wait_for(lambda: order["id"][:8] in (active.text_content() or ""), message="the order under its driver")
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_the_chart_shows_the_analytics_numbers_and_the_export_downloads(
        open_page: Any, stack: Stack, world: World) -> None:
    for quantity in (1, 3):
        ok("POST", f"{stack.api}/api/orders", {"items": [{"product_id": world.products[0]["id"],
                                                           "quantity": quantity}]}, token=world.restaurant, expect=201)
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    page.wait_for_selector("#chart g.day", timeout=seconds(10) * MS)
    page.evaluate("window.dmsAdmin.loadChart()")  # drawn after the two orders for sure
    page.wait_for_function("document.querySelectorAll('#chart g.day').length === 7")
    chart = page.locator("#chart")
    start, end = chart.get_attribute("data-from"), chart.get_attribute("data-to")
    assert start and end
    body = ok("GET", f"{stack.api}/api/analytics/orders?group_by=day&from={quote(start)}&to={quote(end)}",
               token=world.admin)
    expected = {row["key"]: (row["orders"], row["revenue"]) for row in body["rows"]}
    shown = page.evaluate("[...document.querySelectorAll('#chart g.day')].map("
                          "g => [g.dataset.day, Number(g.dataset.orders), g.dataset.revenue])")
    assert len(shown) == 7
    for day, orders, revenue in shown:
        assert (orders, revenue) == expected.get(day, (0, "0.00")), day
    assert sum(orders for _, orders, _ in shown) == sum(orders for orders, _ in expected.values())
    today = shown[-1]
    assert today[1] >= 2 and Decimal(today[2]) >= Decimal(str(world.products[0]["price"])) * 4
    bar_labels = page.locator("#chart g.day .bar-value").all_text_contents()
    assert [int(label) for label in bar_labels] == [orders for _, orders, _ in shown]

    with page.expect_download(timeout=seconds(10) * MS) as download:
        page.click("#export")
    path = download.value.path()
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["id", "restaurant_id", "status", "total_amount", "customer_name", "driver_id", "created_at",
                        "delivered_at"]
    assert len(table) > 2
    page.wait_for_selector("#export-status:has-text('exported')", timeout=seconds(5) * MS)
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_an_admin_page_left_open_leaves_most_of_the_hourly_budget(browser: Any, stack: Stack, world: World) -> None:
    """Issue 11.5: the page used to poll three endpoints every 5 s, 2,160 requests an hour against the
    1,000/hour user limit. A fake clock runs a simulated working day's hour and counts what it sends."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.add_init_script(RECORD_VIOLATIONS)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(urlsplit(r.url).path) if "/api/" in r.url else None)
        page.clock.install()
        page.goto(f"{stack.api}/admin#token={world.admin}")
        page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * MS)
        page.wait_for_selector('[data-body="database"] > *', timeout=seconds(10) * MS)
        page.wait_for_load_state("networkidle")
        at_start = len(requests)
        hours = 2
        for _ in range(hours * 60):  # minute by minute, so each minute's requests start before the next
            page.clock.run_for(60 * MS)
        page.wait_for_load_state("networkidle")
        per_hour = (len(requests) - at_start) / hours
        by_path = Counter(requests[at_start:])
        print(f"requests per simulated hour: {per_hour:.0f} {dict(by_path)}")
        assert per_hour <= 150, by_path  # 15% of the 1,000/hour user limit
        assert by_path["/api/performance/database"] >= hours * 50  # still refreshed, every minute
        assert "/api/realtime/connections" not in by_path  # the counts come over the WebSocket
        assert page.get_attribute("#conn", "data-state") == "connected"
    finally:
        context.close()
