"""Admin performance endpoints, the cache inspector, and the alerts behind them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from api import alerts, performance
from api.app import create_app
from common.config import Config
from common.db import connect, make_pool
from common.migrations import migrate
from devstack import embedded
from tests.api.support import auth, create_order, error_code
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import seconds, wait_for

ENDPOINTS = ("/api/performance/database", "/api/performance/slow-queries", "/api/performance/cache",
             "/api/cache/products:anything")


@pytest.fixture(scope="module")
def bare_database(infra: Infra) -> str:
    """A migrated database of its own, with no relay and without pg_stat_statements."""
    url = embedded.create_database(infra.postgres.port, f"dms_perf_{uuid.uuid4().hex[:8]}")
    migrate(url)
    with connect(url, autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
    return url


@pytest.fixture
def alert_log() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message.record["message"])), level="INFO",
                      filter=lambda record: "alert" in record["extra"])
    yield lines
    logger.remove(sink)


def test_only_admins_may_look(client: Any, world: World) -> None:
    for path in ENDPOINTS:
        assert error_code(client.get(path)) == "unauthorized", path
        assert client.get(path).status_code == 401
        for token in (world.restaurant, world.driver, world.demo):
            response = client.get(path, headers=auth(token))
            assert response.status_code == 403 and error_code(response) == "forbidden", path


def test_database_figures(client: Any, world: World) -> None:
    client.get("/api/orders", headers=auth(world.admin))  # some queries in the window
    body = client.get("/api/performance/database", headers=auth(world.admin)).get_json()
    pool = body["connection_pool"]
    assert set(pool) == {"size", "in_use", "idle", "waiting", "max_size", "utilisation"}
    assert pool["max_size"] == 20 and pool["in_use"] + pool["idle"] == pool["size"]
    assert 0 <= pool["utilisation"] <= 1
    queries = body["query_performance"]
    assert queries["samples"] > 0 and queries["window_s"] == 300
    assert 0 < queries["p50_ms"] <= queries["p95_ms"] <= queries["p99_ms"]
    assert isinstance(body["slow_queries"], list) and isinstance(body["alerts"], list)
    assert "history" not in body


def test_a_slow_query_through_the_pool_shows_in_the_slow_query_list(client: Any, api_app: Any,
                                                                    world: World) -> None:
    with api_app.extensions["dms"].pool.connection() as conn:
        # Marked: other tests (tests/common) sleep too, and pg_stat_statements keeps the comment.
        conn.execute("SELECT pg_sleep(%s) /* slow-query-list test */", (0.3,))
    response = client.get("/api/performance/slow-queries?min_ms=250&limit=50", headers=auth(world.admin))
    assert response.status_code == 200
    body = response.get_json()
    assert body["min_ms"] == 250 and body["limit"] == 50
    (found,) = [q for q in body["items"] if "slow-query-list test" in q["query"]]
    assert "$1" in found["query"]  # normalised, the constant is gone
    assert found["calls"] >= 1 and found["max_ms"] >= 300 and found["mean_ms"] >= 250
    assert found["total_ms"] >= found["mean_ms"]
    assert all(q["mean_ms"] >= 250 for q in body["items"])
    # The window saw it too, and the summary lists it among the slowest.
    summary = client.get("/api/performance/database", headers=auth(world.admin)).get_json()
    assert summary["query_performance"]["p99_ms"] >= 300 or summary["query_performance"]["samples"] > 100
    assert any("pg_sleep" in q["query"] for q in summary["slow_queries"])


def test_slow_query_arguments_are_checked(client: Any, world: World) -> None:
    for query in ("min_ms=abc", "min_ms=-1", "limit=0", "limit=201", "limit=2.5"):
        response = client.get(f"/api/performance/slow-queries?{query}", headers=auth(world.admin))
        assert response.status_code == 422 and error_code(response) == "validation_error", query


def test_without_pg_stat_statements_slow_queries_is_unavailable(infra: Infra, bare_database: str,
                                                               world: World) -> None:
    app = create_app(Config.from_env(infra.env(DATABASE_URL=bare_database)))
    try:
        client = app.test_client()
        response = client.get("/api/performance/slow-queries", headers=auth(world.admin))
        assert response.status_code == 503 and error_code(response) == "unavailable"
        assert "pg_stat_statements" in response.get_json()["error"]["message"]
        # The summary still answers, with no slow statements to show.
        summary = client.get("/api/performance/database", headers=auth(world.admin))
        assert summary.status_code == 200 and summary.get_json()["slow_queries"] == []
    finally:
        app.extensions["dms"].close()


def test_a_pool_past_80_percent_fires_the_alert_until_released(client: Any, api_app: Any, world: World,
                                                              alert_log: list[str]) -> None:
    pool = api_app.extensions["dms"].pool
    release = threading.Event()
    holding: list[int] = []

    def hold() -> None:
        with pool.connection():
            holding.append(1)
            release.wait(seconds(30))

    threads = [threading.Thread(target=hold) for _ in range(17)]  # 17 of 20 = 85 %
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(holding) == 17, message="17 connections held")
        body = client.get("/api/performance/database", headers=auth(world.admin)).get_json()
        assert body["connection_pool"]["in_use"] >= 17 and body["connection_pool"]["utilisation"] > 0.8
        (alert,) = [a for a in body["alerts"] if a["name"] == "pool_utilisation"]
        assert alert["threshold"] == 0.8 and alert["value"] > 0.8 and alert["severity"] == "critical"
        # Still firing on the next look: logged once, not once per request.
        client.get("/api/performance/database", headers=auth(world.admin))
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=seconds(10))
    body = client.get("/api/performance/database", headers=auth(world.admin)).get_json()
    assert body["connection_pool"]["utilisation"] <= 0.8
    assert "pool_utilisation" not in [a["name"] for a in body["alerts"]]
    pool_lines = [line for line in alert_log if "pool" in line]
    assert len(pool_lines) == 2
    assert pool_lines[0].startswith("alert started") and pool_lines[1] == "alert stopped: pool_utilisation"


def test_cache_figures_move_with_hits_and_misses(client: Any, world: World) -> None:
    def figures() -> dict[str, Any]:
        return client.get("/api/performance/cache", headers=auth(world.admin)).get_json()  # type: ignore[no-any-return]

    product_id = world.products[0]["id"]
    client.patch(f"/api/products/{product_id}", json={"unit": "crate"}, headers=auth(world.admin))
    before = figures()
    assert client.get(f"/api/products/{product_id}", headers=auth(world.driver)).headers["X-Cache"] == "MISS"
    middle = figures()
    assert (middle["hits"], middle["misses"]) == (before["hits"], before["misses"] + 1)
    assert middle["keys"] >= 1 and middle["keys_by_namespace"]["products"] >= 1
    for _ in range(3):
        assert client.get(f"/api/products/{product_id}", headers=auth(world.driver)).headers["X-Cache"] == "HIT"
    after = figures()
    assert (after["hits"], after["misses"]) == (middle["hits"] + 3, middle["misses"])
    assert after["hit_ratio"] == round(after["hits"] / (after["hits"] + after["misses"]), 4)
    assert after["keys"] == sum(after["keys_by_namespace"].values())


def test_a_cache_entry_is_shown_with_personal_fields_redacted(client: Any, world: World) -> None:
    order = create_order(client, world.restaurant, world.products[0]["id"], customer_name="Ada Lovelace",
                         notes="ring twice, flat 3")
    client.get(f"/api/orders/{order['id']}", headers=auth(world.restaurant))  # cached on write or on read
    response = client.get(f"/api/cache/orders:{order['id']}", headers=auth(world.admin))
    assert response.status_code == 200
    entry = response.get_json()
    assert entry["hit"] is True
    assert entry["key"].startswith("dms:{api}:cache:orders:g") and entry["key"].endswith(order["id"])
    assert 0 < entry["ttl"] <= 3600 * 1.2
    assert entry["value"]["customer_name"] == "[redacted]" and entry["value"]["notes"] == "[redacted]"
    assert entry["value"]["id"] == order["id"] and entry["value"]["total_amount"] == order["total_amount"]
    assert "Ada" not in response.get_data(as_text=True) and "flat 3" not in response.get_data(as_text=True)
    # The full Redis key works too.
    again = client.get(f"/api/cache/{entry['key']}", headers=auth(world.admin)).get_json()
    assert again == entry | {"ttl": again["ttl"]}


def test_an_absent_entry_is_a_miss_and_other_keys_are_not_found(client: Any, world: World) -> None:
    missing = client.get(f"/api/cache/products:one:{uuid.uuid4()}", headers=auth(world.admin))
    assert missing.status_code == 200
    assert missing.get_json() | {"key": None} == {"key": None, "hit": False, "value": None, "ttl": None}
    for key in ("dms:{api}:cache:hits", "dms:{api}:cache:gen:products", "dms:{api}:rl:ip:127.0.0.1:60:1",
                "dms:gw:gw-test", f"dms:{{api}}:profile-seen:{uuid.uuid4()}", "elsewhere:thing",
                "dms:{api}:cache:products:g0:one:x:lock", "sessions:abc", "products"):
        response = client.get(f"/api/cache/{key}", headers=auth(world.admin))
        assert response.status_code == 404 and error_code(response) == "not_found", key


def test_history_comes_from_the_samples(client: Any, api_app: Any, world: World) -> None:
    svc, perf = api_app.extensions["dms"], api_app.extensions["dms_performance"]
    performance.record_sample(svc, perf)
    performance.record_sample(svc, perf)
    for time_range in ("1h", "24h", "7d"):
        body = client.get(f"/api/performance/database?timeRange={time_range}", headers=auth(world.admin)).get_json()
        assert body["time_range"] == time_range
        assert body["history"] and sum(point["samples"] for point in body["history"]) >= 2
        point = body["history"][-1]
        assert point["at"].endswith("Z") or "+" in point["at"]
        assert 0 <= point["pool_utilisation"] <= 1
    assert [p["at"] for p in body["history"]] == sorted(p["at"] for p in body["history"])
    bad = client.get("/api/performance/database?timeRange=3d", headers=auth(world.admin))
    assert bad.status_code == 422 and error_code(bad) == "validation_error"


def test_relay_lag_is_the_wait_of_the_oldest_unpublished_event(bare_database: str) -> None:
    pool = make_pool(bare_database, name="lag-test", max_size=2)
    pool.open(wait=True)
    try:
        assert performance.relay_lag_s(pool) == 0.0
        with pool.connection() as conn:
            conn.execute("INSERT INTO events (channels, event, data) VALUES ('{orders}', 'test.old', '{}')")
        with pool.connection() as conn:  # created_at is the commit time (sql/0008): age it afterwards
            row = conn.execute("UPDATE events SET created_at = now() - interval '5 seconds'"
                               " WHERE event = 'test.old' RETURNING id").fetchone()
        assert row is not None
        assert 5 <= performance.relay_lag_s(pool) < 60
        with pool.connection() as conn:
            conn.execute("INSERT INTO relay_cursor (name, last_id) VALUES ('relay', %s)", (row["id"],))
        assert performance.relay_lag_s(pool) == 0.0
    finally:
        pool.close()


# -- the alert rules themselves ------------------------------------------------------------------
def test_each_threshold_fires_only_past_its_limit() -> None:
    quiet = alerts.Readings(query_p95_ms=200, pool_utilisation=0.8, cache_hits=50, cache_misses=50,
                            relay_lag_s=1.0, slow_consumer_disconnects=10)
    assert alerts.evaluate(quiet) == []
    loud = alerts.Readings(query_p95_ms=201, pool_utilisation=0.81, cache_hits=49, cache_misses=51,
                           relay_lag_s=1.5, slow_consumer_disconnects=11)
    assert [a.name for a in alerts.evaluate(loud)] == list(alerts.ALERT_NAMES)
    # A cold cache (fewer than 100 lookups) does not alert, however bad its ratio.
    assert alerts.evaluate(alerts.Readings(cache_hits=0, cache_misses=99)) == []
    assert alerts.evaluate(alerts.Readings()) == []


def test_alert_state_logs_starts_and_stops_once(alert_log: list[str]) -> None:
    state = alerts.AlertState()
    lag = alerts.Alert("relay_lag", "lagging", 2.0, 1.0)
    state.update([lag])
    state.update([lag])
    assert state.firing == ["relay_lag"]
    # A reading that could not be taken neither stops nor starts the alert.
    state.update([], checked=frozenset({"pool_utilisation"}))
    assert state.firing == ["relay_lag"]
    state.update([])
    state.update([])
    assert state.firing == []
    assert alert_log == ["alert started: lagging", "alert stopped: relay_lag"]


def test_slow_consumer_storms_count_the_growth_within_a_minute() -> None:
    now = [1000.0]
    delta = alerts.CounterDelta(window_s=60, clock=lambda: now[0])
    assert delta.update({"gw-a": 5}) == 0  # first sight: counts from now
    now[0] += 30
    assert delta.update({"gw-a": 9, "gw-b": 3}) == 4
    now[0] += 31
    assert delta.update({"gw-a": 20, "gw-b": 3}) == 15  # baseline: the sample 61 s ago
    now[0] += 30
    assert delta.update({"gw-a": 20, "gw-b": 3}) == 11  # baseline: the sample 61 s ago (gw-a at 9)
    now[0] += 61
    assert delta.update({"gw-a": 2, "gw-b": 3}) == 2  # gw-a restarted: its counter began again


def test_every_request_counts_in_the_operators_request_figures(client: Any, api_app: Any, world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampled API p95 and request count come from the requests this process answered."""
    svc, perf = api_app.extensions["dms"], api_app.extensions["dms_performance"]
    # Fresh windows: the shared app's hold earlier tests' requests, which leave them as they age.
    monkeypatch.setattr(perf, "requests", performance.LatencyWindow(window_s=performance.SAMPLE_EVERY_S))
    monkeypatch.setattr(perf, "errors", performance.LatencyWindow(window_s=performance.SAMPLE_EVERY_S))
    for _ in range(3):
        assert client.get("/api/products", headers=auth(world.restaurant)).status_code == 200
    assert client.get("/api/orders/not-a-uuid", headers=auth(world.restaurant)).status_code == 404
    assert perf.requests.percentiles()["samples"] == 4
    ops = performance.operators(svc, perf)
    assert ops.api_requests == 4 and ops.api_errors == 0  # a 404 is not an error of the API's
    assert ops.api_p95_ms is not None and ops.api_p95_ms > 0
