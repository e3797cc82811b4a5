"""The admin page's first screen in real Chromium: history charts against the stored samples, a map that
fits the main cluster with an outlier listed apart, presence going stale (and the assignment warning)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.db import connect
from tests.browser.support import Stack, Watched, ok, open_admin, page_stack
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient, seconds, wait_for

pytestmark = pytest.mark.needs_system("chromium")
MS = 1000
STALE_S = 2.0
METRICS = ("connections", "deliveries_per_s", "delivery_p95_ms", "orders_per_min", "api_p95_ms", "api_error_rate")


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The pages' stack with a small DRIVER_STALE_SECONDS, so a silence is seconds long."""
    yield from page_stack(infra, tmp_path_factory.mktemp("browser-live"), name="live",
                          DRIVER_STALE_SECONDS=str(STALE_S))




def _driver(stack: Stack, world: World, name: str, lat: float, lng: float) -> tuple[str, str]:
    driver_id = str(uuid.uuid4())
    ok("POST", f"{stack.api}/api/users", {"id": driver_id, "role": "driver", "display_name": name},
        token=world.admin, expect=201)
    token = World.token("driver", sub=driver_id)
    ok("POST", f"{stack.api}/api/drivers/me/status", {"status": "online"}, token=token)
    ok("POST", f"{stack.api}/api/drivers/me/locations", {"points": [{"lat": lat, "lng": lng}]}, token=token,
        expect=202)
    return driver_id, token


def test_the_charts_draw_the_stored_samples_and_extend_them_live(open_page: Any, stack: Stack, world: World,
                                                                 infra: Infra) -> None:
    now = datetime.now(UTC).replace(second=5, microsecond=0)
    samples = [(50, 5, {"gw-a": 3, "gw-b": 2}, 12.5, 40.0, 6, 8.0, 200, 0),
               (30, 9, {"gw-a": 6, "gw-b": 3}, 30.0, 55.0, 11, 12.5, 300, 3),
               (10, 7, {"gw-a": 4, "gw-b": 3}, 21.0, 47.5, 8, 9.0, 250, 1)]
    with connect(infra.database_url) as conn:
        for minutes, total, gateways, deliveries, delivery_p95, orders, api_p95, requests, errors in samples:
            conn.execute(
                "INSERT INTO performance_samples (at, source, pool_size, pool_in_use, pool_waiting, pool_max_size,"
                " query_samples, connections, gateways, deliveries_per_s, delivery_p95_ms, orders_per_min,"
                " api_p95_ms, api_requests, api_errors) VALUES (%s, 'browser-test', 2, 1, 0, 20, 0, %s, %s, %s,"
                " %s, %s, %s, %s, %s)",
                (now - timedelta(minutes=minutes), total, json.dumps(gateways), deliveries, delivery_p95, orders,
                 api_p95, requests, errors))
        conn.commit()
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    page.wait_for_selector('.tile[data-metric="connections"] circle.pt.hist', timeout=seconds(10) * MS)

    def drawn(metric: str) -> list[tuple[str, float]]:
        return [(at, float(value)) for at, value in page.evaluate(
            f"[...document.querySelectorAll('.tile[data-metric=\"{metric}\"] circle.pt.hist')]"
            ".map(c => [c.dataset.at, c.dataset.value])")]

    def matches() -> bool:
        # The page's own minute refresh, then the API's answer for the same range: equal point for point.
        page.evaluate("window.dmsAdmin.refresh()")
        page.wait_for_load_state("networkidle")
        history = ok("GET", f"{stack.api}/api/performance/database?timeRange=1h", token=world.admin)["history"]
        for metric in METRICS:
            expected = [(datetime.fromisoformat(p["at"]).astimezone(UTC), float(p[metric]))
                        for p in history if p[metric] is not None]
            shown = [(datetime.fromisoformat(at.replace("Z", "+00:00")), value) for at, value in drawn(metric)]
            if shown != expected:
                return False
        return True

    wait_for(matches, timeout_s=10, interval_s=0.5, message="every chart's points equal to the API's samples")
    # Our samples among them: the 30-minute-old one has the peak connections and error rate.
    at_30 = (now - timedelta(minutes=30)).replace(second=0)

    def by_time(metric: str) -> dict[datetime, float]:
        return {datetime.fromisoformat(at.replace("Z", "+00:00")): value for at, value in drawn(metric)}

    assert by_time("connections")[at_30] == 9
    assert by_time("api_error_rate")[at_30] == 0.01
    lines = page.evaluate("[...document.querySelectorAll('.tile[data-metric=\"connections\"] polyline')]"
                          ".map(l => l.dataset.series)")
    assert "connections" in lines and "gateway:gw-a" in lines and "gateway:gw-b" in lines

    # Live: each `admin:connections` frame adds a point after the stored ones.
    page.wait_for_selector('.tile[data-metric="connections"] circle.pt.live', timeout=seconds(10) * MS)

    def live_value() -> float:
        return float(page.evaluate("Number([...document.querySelectorAll('.tile[data-metric=\"connections\"]"
                                   " circle.pt.live')].pop().dataset.value)"))

    # This page's own connection at least. Each gateway writes its numbers once a period, so the
    # first frames may predate the page's connection by a period or two: wait for one that counts it.
    wait_for(lambda: live_value() >= 1, timeout_s=10, interval_s=0.5, message="a live point counting this page")
    page.click('.range-choice[data-range="24h"]')
    page.wait_for_selector('.range-choice[data-range="24h"][aria-pressed="true"]')
    wait_for(lambda: len(drawn("connections")) >= 1, message="the day's buckets drawn")
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_the_map_fits_the_main_cluster_and_lists_the_outlier(open_page: Any, stack: Stack, world: World) -> None:
    city = [_driver(stack, world, f"Amsterdam {n}", 52.37 + 0.004 * (n % 4), 4.89 + 0.006 * (n // 4))[0]
            for n in range(8)]
    same_spot = [_driver(stack, world, f"Dam {n}", 52.3731, 4.8926)[0] for n in range(3)]
    far, _ = _driver(stack, world, "Tbilisi", 41.7151, 44.8271)
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    page.wait_for_selector(f'#fleet-outliers li[data-driver-id="{far}"]', timeout=seconds(10) * MS)
    assert "Tbilisi" in (page.locator(f'#fleet-outliers li[data-driver-id="{far}"]').text_content() or "")
    bounds = {k: float(page.get_attribute("#fleet-map", f"data-{k}") or "nan")
              for k in ("south", "north", "west", "east")}
    assert bounds["north"] - bounds["south"] < 0.5 and bounds["east"] - bounds["west"] < 0.5, bounds  # a city
    assert bounds["south"] < 52.37 and bounds["north"] > 52.382 and bounds["west"] < 4.89 and bounds["east"] > 4.896
    assert not bounds["south"] < 41.7151 < bounds["north"]
    offmap = page.locator(f'#fleet-dots circle.offmap[data-driver-id="{far}"]')  # a marker on the edge, its way
    assert offmap.count() == 1
    assert float(offmap.get_attribute("cx") or 0) > 500 and float(offmap.get_attribute("cy") or 0) > 300
    for driver_id in city:  # each on the map, alone or in a cluster
        assert page.locator(f'#fleet-dots circle[data-driver-id="{driver_id}"], '
                            f'#fleet-dots g.cluster[data-driver-ids~="{driver_id}"]').count() == 1
    cluster = page.locator(f'#fleet-dots g.cluster[data-driver-ids~="{same_spot[0]}"]')
    assert cluster.count() == 1 and int(cluster.get_attribute("data-count") or 0) >= 3
    assert all(d in (cluster.get_attribute("data-driver-ids") or "").split() for d in same_spot)
    boxes = page.evaluate("[...document.querySelectorAll('#fleet-labels text')].map(t => {"
                          " const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; })")
    assert boxes, "some labels"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), ("labels overprint", a, b)
    labels = page.locator("#fleet-labels text").all_text_contents()
    assert any(label.startswith("Amsterdam") for label in labels)  # names, not id prefixes
    assert not any(label.startswith("Dam ") for label in labels)  # inside their cluster
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_a_silent_driver_goes_stale_and_assigning_warns(open_page: Any, stack: Stack, world: World) -> None:
    driver_id, token = _driver(stack, world, "Quiet Quinn", 52.40, 4.95)
    app = WsClient.connect(stack.gateway_url, token=token, origin=stack.api)
    assert app.recv()["type"] == "welcome"
    watched = open_admin(open_page, stack, world.admin)
    page = watched.page
    row = f'#drivers tr[data-driver-id="{driver_id}"]'
    page.wait_for_selector(f'{row}[data-status="online"]', timeout=seconds(10) * MS)
    assert "Quiet Quinn" in (page.locator(f"{row} td").first.text_content() or "")

    app.close()  # the app is gone: stale one window later, pushed over the `drivers` channel
    page.wait_for_selector(f'{row}[data-status="stale"]', timeout=seconds(STALE_S * 8) * MS)
    assert (page.locator(f"{row} .badge").text_content() or "") == "stale"
    page.wait_for_selector(f'#fleet-dots circle.status-stale[data-driver-id="{driver_id}"]',
                           timeout=seconds(5) * MS)

    order = ok("POST", f"{stack.api}/api/orders", {"items": [{"product_id": world.products[0]["id"], "quantity": 1}]},
                token=world.restaurant, expect=201)
    ok("POST", f"{stack.api}/api/orders/{order['id']}/status", {"status": "confirmed"}, token=world.admin)
    waiting = f'#awaiting tr[data-order-id="{order["id"]}"]'
    following = page.locator('[data-pager="awaiting"] .page-next')

    def on_this_page() -> bool:  # live from `orders`; the newest waiting order is on the last page
        if page.locator(waiting).count():
            return True
        if following.count() and following.is_enabled():
            following.click()
        return False

    wait_for(on_this_page, timeout_s=10, interval_s=0.1, message="the order among those waiting")
    assert world.restaurant_id[:8] in (page.locator(f"{waiting} td").nth(1).text_content() or "")  # "R <id8>"
    page.select_option(f"{waiting} select", driver_id)
    page.locator(f"{waiting} button.assign").click()
    page.wait_for_selector(f"{waiting} .stale-warning", timeout=seconds(5) * MS)
    assert "stale" in (page.locator(f"{waiting} .stale-warning").text_content() or "")
    assert ok("GET", f"{stack.api}/api/orders/{order['id']}", token=world.admin)["driver_id"] is None
    page.locator(f"{waiting} button.assign").click()  # "Assign anyway"
    page.wait_for_selector(waiting, state="detached", timeout=seconds(5) * MS)
    assert ok("GET", f"{stack.api}/api/orders/{order['id']}", token=world.admin)["driver_id"] == driver_id
    watched.assert_clean(failed_loads_allowed=("/api/performance/",))


def test_the_board_header_names_the_restaurant(open_page: Any, stack: Stack, world: World) -> None:
    watched: Watched = open_page(f"{stack.api}/board#token={world.restaurant}")
    page = watched.page
    page.wait_for_selector("#subject[data-restaurant-name]", timeout=seconds(10) * MS)
    assert page.locator("#subject").text_content() == f"restaurant · R {world.restaurant_id[:8]}"
    watched.assert_clean()
