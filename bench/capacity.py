"""Capacity model: the fleet a workload needs, from per-unit costs measured by the benchmarks.

`python -m bench.capacity [--connections 10000,100000,1000000] [--events-per-s N | --events-per-connection-s R]
[--frames-per-connection-s F] [--json]`

Nothing here is typed in from memory: each cost is read from a committed report in docs/perf/,
named in INPUTS with the path of the number inside it, and printed beside the answer. Running a
benchmark again and committing its report changes the answer. Planning headroom (`--utilisation`)
and the per-process connection cap (the `WS_MAX_CONNECTIONS` default) are policies, not costs.

The model, per second:

- gateways: a gevent process uses one core. It needs memory per connection and CPU per frame
  delivered; processes = the larger of connections / cap and CPU / (one core x utilisation).
- relay: one leader carries every stored event (the advisory lock makes it one), so its
  utilisation is events/s over its measured ceiling. It does not scale out.
- Redis: each stored event is one PUBLISH per channel; Redis spends a base cost per message and a
  cost per subscribed connection it writes to (a gateway holding the channel). A shard is one
  core; sharded pub/sub (SPUBLISH, docs/FLEET.md) sends a message only within its shard, so
  shards = CPU / (one core x utilisation).
- PostgreSQL: one primary takes every write. Each stored event comes from one write transaction,
  costed as an order creation (the dearest write the API makes), and the relay reads it once.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT

PERF = ROOT / "docs" / "perf"


def at(body: Any, path: str) -> Any:
    """`a.b[0].c` in a report's JSON."""
    for part in path.replace("[", ".").replace("]", "").split("."):
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


def pg_ms_per_order(body: Any) -> float:
    # bench.api records PostgreSQL's CPU share and the order rate; per order is their quotient.
    step = at(body, "runs[0].closed_loop.orders[0]")
    return round(10 * step["cpu_percent"]["postgres"] / step["per_s"], 3)


@dataclass(frozen=True)
class Input:
    name: str
    report: str  # a file in docs/perf/
    path: str  # where in it, or how it is derived
    unit: str
    what: str
    derive: Callable[[Any], float] | None = None

    def read(self, perf: Path) -> float:
        body = json.loads((perf / self.report).read_text())
        return float(self.derive(body) if self.derive else at(body, self.path))


INPUTS = (
    Input("gateway_kib_per_connection", "peer3.json", "comparison.dms.big.kib_per_connection", "KiB",
          "gateway memory per open, subscribed connection (10,000 connections on one machine)"),
    Input("gateway_base_mib", "fanout.json", "results[0].server_rss_mb.before", "MiB",
          "a gateway process before its first connection"),
    Input("gateway_cpu_us_per_frame", "peer3.json", "comparison.dms.big.cpu_ms_per_1000_frames", "us",
          "gateway CPU per frame delivered, at 10,000 connections (their idle work included)"),
    Input("relay_events_per_s", "relay-ceiling-after.json", "drain.events_per_s", "events/s",
          "one relay's ceiling: the rate it drains a committed backlog at, 3 channels per event"),
    Input("relay_cpu_us_per_event", "relay-ceiling-after.json", "drain.relay_cpu_us_per_event", "us",
          "relay CPU per event at its ceiling"),
    Input("redis_us_per_message", "redis-costs.json", "base_us_per_message", "us",
          "Redis CPU per PUBLISH of a 370-byte frame, before any subscriber"),
    Input("redis_us_per_subscriber", "redis-costs.json", "us_per_subscriber", "us",
          "Redis CPU per subscribed connection (a gateway) a message is written to"),
    Input("postgres_us_per_event_outbox", "relay-ceiling-after.json", "flat_out.postgres_cpu_us_per_event", "us",
          "PostgreSQL CPU per outbox event: insert, commit-time numbering, the relay's read"),
    Input("postgres_ms_per_order", "api-round2.json",
          "runs[0].closed_loop.orders[0]: 10 x cpu_percent.postgres / per_s", "ms",
          "PostgreSQL CPU per order created through the API (order, items, outbox row)", pg_ms_per_order),
)


def read_inputs(perf: Path = PERF) -> dict[str, float]:
    return {spec.name: spec.read(perf) for spec in INPUTS}


@dataclass(frozen=True)
class Workload:
    connections: int
    events_per_s: float  # stored events committed (order events), fleet-wide
    frames_per_connection_s: float  # frames each connection receives a second, on average
    channels_per_event: int = 3
    ephemeral_messages_per_s: float = 0.0  # driver locations and the like: Redis messages, no outbox row
    utilisation: float = 0.6  # plan every core to this share, leaving room for bursts and failover
    connections_per_process: int = 20_000  # WS_MAX_CONNECTIONS default
    postgres_cores: int = 16  # the primary's cores, for its utilisation


def plan(load: Workload, costs: dict[str, float]) -> dict[str, Any]:
    frames_per_s = load.connections * load.frames_per_connection_s
    gateway_cpu_cores = frames_per_s * costs["gateway_cpu_us_per_frame"] / 1e6
    processes = max(math.ceil(load.connections / load.connections_per_process),
                    math.ceil(gateway_cpu_cores / load.utilisation), 1)
    per_process = load.connections / processes
    gateway_memory_gib = processes * (costs["gateway_base_mib"] / 1024
                                      + per_process * costs["gateway_kib_per_connection"] / 2**20)

    messages_per_s = load.events_per_s * load.channels_per_event + load.ephemeral_messages_per_s
    # Frames delivered per Redis message, spread over the processes: a gateway holds one
    # subscription per channel however many of its clients listen, so Redis writes each message to
    # the gateways that hold its channel (subscribers placed at random among the processes).
    subscribers_per_message = frames_per_s / messages_per_s if messages_per_s else 0.0
    gateways_per_message = processes * (1 - (1 - 1 / processes) ** subscribers_per_message)
    redis_cpu_cores = messages_per_s * (costs["redis_us_per_message"]
                                        + gateways_per_message * costs["redis_us_per_subscriber"]) / 1e6
    redis_shards = max(1, math.ceil(redis_cpu_cores / load.utilisation))

    relay_utilisation = load.events_per_s / costs["relay_events_per_s"]
    postgres_cpu_cores = load.events_per_s * (costs["postgres_ms_per_order"] / 1e3
                                              + costs["postgres_us_per_event_outbox"] / 1e6)
    postgres_utilisation = postgres_cpu_cores / load.postgres_cores
    single_nodes = {"relay leader": relay_utilisation, "PostgreSQL primary": postgres_utilisation}
    first = max(single_nodes, key=lambda name: single_nodes[name])
    return {
        "connections": load.connections, "events_per_s": load.events_per_s, "frames_per_s": round(frames_per_s),
        "gateway": {"processes": processes, "cores": processes, "connections_per_process": round(per_process),
                    "cpu_cores_used": round(gateway_cpu_cores, 2), "memory_gib": round(gateway_memory_gib, 1)},
        "redis": {"messages_per_s": round(messages_per_s), "gateways_per_message": round(gateways_per_message, 1),
                  "cpu_cores_used": round(redis_cpu_cores, 2), "shards": redis_shards},
        "relay": {"utilisation": round(relay_utilisation, 3),
                  "cpu_cores_used": round(load.events_per_s * costs["relay_cpu_us_per_event"] / 1e6, 2)},
        "postgres": {"write_transactions_per_s": round(load.events_per_s),
                     "outbox_rows_per_s": round(load.events_per_s),
                     "cpu_cores_used": round(postgres_cpu_cores, 2),
                     "utilisation_of_primary": round(postgres_utilisation, 3)},
        "saturates_first": first if single_nodes[first] >= load.utilisation else None,
        "single_node_utilisation": {name: round(value, 3) for name, value in single_nodes.items()},
        "events_per_s_limit": {
            "relay leader": round(costs["relay_events_per_s"] * load.utilisation),
            "PostgreSQL primary": round(load.postgres_cores * load.utilisation / (
                costs["postgres_ms_per_order"] / 1e3 + costs["postgres_us_per_event_outbox"] / 1e6))},
    }


def render(plans: list[dict[str, Any]], costs: dict[str, float], load: Workload) -> str:
    lines = ["inputs (docs/perf/):"]
    for spec in INPUTS:
        lines.append(f"  {spec.name:32} {costs[spec.name]:>10g} {spec.unit:9} {spec.report}: {spec.what}")
    lines.append(f"policy: plan cores to {load.utilisation:.0%}, at most {load.connections_per_process:,} connections"
                 f" per gateway process, a {load.postgres_cores}-core PostgreSQL primary,"
                 f" {load.frames_per_connection_s:g} frames per connection a second, {load.channels_per_event}"
                 " channels per event")
    header = (f"{'connections':>11} {'events/s':>9} {'frames/s':>10} | {'gw procs':>8} {'gw GiB':>7} | "
              f"{'redis msg/s':>11} {'shards':>6} | {'relay':>6} | {'pg tx/s':>8} {'pg cores':>8} | first to saturate")
    lines += ["", header, "-" * len(header)]
    for p in plans:
        busiest = max(p["single_node_utilisation"], key=lambda n: p["single_node_utilisation"][n])
        first = p["saturates_first"] or f"none past {load.utilisation:.0%}"
        lines.append(
            f"{p['connections']:>11,} {p['events_per_s']:>9,.0f} {p['frames_per_s']:>10,} | "
            f"{p['gateway']['processes']:>8} {p['gateway']['memory_gib']:>7} | {p['redis']['messages_per_s']:>11,} "
            f"{p['redis']['shards']:>6} | {p['relay']['utilisation']:>6.0%} | "
            f"{p['postgres']['write_transactions_per_s']:>8,} {p['postgres']['cpu_cores_used']:>8} | {first};"
            f" busiest single node: {busiest} at {p['single_node_utilisation'][busiest]:.0%}")
    limits = plans[0]["events_per_s_limit"]
    lines += ["", "stored events/s the single nodes carry at that utilisation: "
              + ", ".join(f"{name} {value:,}" for name, value in limits.items()),
              "(the relay's figure is its drain rate on the shared bench machine; on a core of its own its CPU"
              f" per event allows {1e6 / costs['relay_cpu_us_per_event'] * load.utilisation:,.0f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="10000,100000,1000000", help="comma list of open connections")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--events-per-s", type=float, help="stored events committed a second, the same for every size")
    rate.add_argument("--events-per-connection-s", type=float, default=0.02,
                      help="stored events a second per connection (default 0.02: 1M connections -> 20,000/s)")
    parser.add_argument("--frames-per-connection-s", type=float, default=1.0,
                        help="frames each connection receives a second (stored and ephemeral events)")
    parser.add_argument("--channels-per-event", type=int, default=3)
    parser.add_argument("--ephemeral-messages-per-s", type=float, default=0.0,
                        help="Redis messages a second that are not stored events (driver locations)")
    parser.add_argument("--utilisation", type=float, default=0.6, help="share of each core to plan for")
    parser.add_argument("--postgres-cores", type=int, default=16)
    parser.add_argument("--perf-dir", type=Path, default=PERF, help="where the reports are read from")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON")
    args = parser.parse_args(argv)
    from common.config import Config  # the per-process connection cap is the admission default

    costs = read_inputs(args.perf_dir)
    plans, load = [], None
    for connections in (int(n) for n in args.connections.split(",")):
        events = args.events_per_s if args.events_per_s is not None else connections * args.events_per_connection_s
        load = Workload(connections, events, args.frames_per_connection_s, args.channels_per_event,
                        args.ephemeral_messages_per_s, args.utilisation, Config.ws_max_connections,
                        postgres_cores=args.postgres_cores)
        plans.append(plan(load, costs))
    assert load is not None
    if args.json:
        print(json.dumps({"inputs": costs, "plans": plans}, indent=2))
    else:
        print(render(plans, costs, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
