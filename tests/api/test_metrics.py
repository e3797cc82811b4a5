"""`GET /metrics` on the API: Prometheus text with request latency, cache, fail-open and pool figures."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.api.support import auth
from tests.fix_world import World


def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_is_open_and_never_rate_limited(client: Any) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers
    assert b"dms_api_request_duration_seconds" in response.data


def test_request_latency_is_labelled_by_route_template_method_and_status(client: Any, world: World) -> None:
    before = scrape(client)
    product_id = world.products[0]["id"]
    assert client.get(f"/api/products/{product_id}", headers=auth(world.admin)).status_code == 200
    assert client.get(f"/api/products/{uuid.uuid4()}", headers=auth(world.admin)).status_code == 404
    assert client.get("/api/nowhere", headers=auth(world.admin)).status_code == 404
    after = scrape(client)
    count = "dms_api_request_duration_seconds_count"
    route = "/api/products/<product_id>"
    assert value(after, count, route=route, method="GET", status="200") == \
        value(before, count, route=route, method="GET", status="200") + 1
    assert value(after, count, route=route, method="GET", status="404") == \
        value(before, count, route=route, method="GET", status="404") + 1
    assert value(after, count, route="<unmatched>", method="GET", status="404") >= 1
    # No ids in labels: the route template, never the path.
    assert not any(product_id in str(labels) for labels in after[count])


def test_cache_lookups_and_fail_open_are_counted(client: Any, world: World) -> None:
    product_id = world.products[1]["id"]
    client.patch(f"/api/products/{product_id}", json={"unit": "box"}, headers=auth(world.admin))
    before = scrape(client)
    assert client.get(f"/api/products/{product_id}", headers=auth(world.admin)).headers["X-Cache"] == "MISS"
    assert client.get(f"/api/products/{product_id}", headers=auth(world.admin)).headers["X-Cache"] == "HIT"
    after = scrape(client)
    lookups = "dms_api_cache_lookups_total"
    assert value(after, lookups, result="hit") == value(before, lookups, result="hit") + 1
    assert value(after, lookups, result="miss") == value(before, lookups, result="miss") + 1
    assert ("feature", "cache") in {pair for labels in after["dms_api_redis_fail_open_total"] for pair in labels}


def test_pool_gauges_are_read_at_scrape_time(client: Any, api_app: Any) -> None:
    pool = api_app.extensions["dms"].pool
    held = [pool.getconn() for _ in range(3)]
    try:
        during = scrape(client)
        assert value(during, "dms_db_pool_max_size", pool="api") >= pool.max_size
        in_use = value(during, "dms_db_pool_size", pool="api") - value(during, "dms_db_pool_available", pool="api")
        assert in_use >= 3
    finally:
        for conn in held:
            pool.putconn(conn)
    after = scrape(client)
    assert value(after, "dms_db_pool_size", pool="api") - value(after, "dms_db_pool_available", pool="api") < in_use
    assert "dms_db_pool_requests_waiting" in after


def test_queries_are_timed_through_the_pool(client: Any, world: World) -> None:
    before = scrape(client)
    client.get("/api/orders", headers=auth(world.admin))
    after = scrape(client)
    count = "dms_db_query_duration_seconds_count"
    assert value(after, count, pool="api") > value(before, count, pool="api")
