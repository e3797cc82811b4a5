"""The capacity model: every input comes from a committed report, and the fleet follows from the costs."""

from __future__ import annotations

import pytest

from bench.capacity import INPUTS, PERF, Workload, plan, read_inputs

COSTS = {"gateway_kib_per_connection": 16.0, "gateway_base_mib": 64.0, "gateway_cpu_us_per_frame": 20.0,
         "relay_events_per_s": 10_000.0, "relay_cpu_us_per_event": 30.0, "redis_us_per_message": 1.0,
         "redis_us_per_subscriber": 0.5, "postgres_us_per_event_outbox": 40.0, "postgres_ms_per_order": 1.5}


def test_every_input_is_read_from_a_committed_report() -> None:
    costs = read_inputs()
    assert set(costs) == set(COSTS) == {spec.name for spec in INPUTS}
    assert all(value > 0 for value in costs.values()), costs
    assert all((PERF / spec.report).is_file() for spec in INPUTS)


def test_connections_set_the_gateways_until_frames_need_more_cores() -> None:
    few_frames = plan(Workload(1_000_000, 1000, 0.1, connections_per_process=20_000), COSTS)
    assert few_frames["gateway"]["processes"] == 50  # the connection cap decides
    many_frames = plan(Workload(1_000_000, 1000, 5.0, connections_per_process=20_000), COSTS)
    assert many_frames["gateway"]["processes"] == 167  # 100 cores of frames at 60% each
    assert many_frames["gateway"]["memory_gib"] == pytest.approx(167 * 64 / 1024 + 1_000_000 * 16 / 2**20, abs=0.1)


def test_redis_writes_a_message_to_at_most_every_gateway_and_at_least_one() -> None:
    result = plan(Workload(100_000, 2000, 1.0, connections_per_process=20_000), COSTS)
    assert 1 <= result["redis"]["gateways_per_message"] <= result["gateway"]["processes"]
    assert result["redis"]["messages_per_s"] == 6000


def test_the_single_node_furthest_past_its_budget_saturates_first() -> None:
    quiet = plan(Workload(10_000, 100, 1.0), COSTS)
    assert quiet["saturates_first"] is None
    busy = plan(Workload(1_000_000, 9000, 1.0), COSTS)  # relay at 90%, PostgreSQL 9000 x 1.54 ms / 16 = 87%
    assert busy["saturates_first"] == "relay leader"
    assert busy["events_per_s_limit"]["relay leader"] == 6000
