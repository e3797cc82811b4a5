"""`python -m bench.peer [--quick]`: our gateway, Flask-SocketIO and Node socket.io on the same fan-out.

Every system gets a freshly started server, the same client processes (bench.wsclients, two of
them), the same rooms and the same events: orders created through POST /api/orders, whose outbox
rows reach each system through its own Redis path (our relay; a feeder emitting through the peer's
Redis queue or adapter). `--source redis` skips the API and outbox and publishes straight to Redis.
Measured per step: server CPU-seconds per 1,000 delivered frames (/proc/PID/stat of the server
processes only, summed when a system runs several, as `dms-2` does), commit-to-client p50/p99,
lost and duplicated frames, and the client processes' CPU; per server: memory per connection on a
fresh server. The 10,000-connection step weighs the server idle and at 2,000 deliveries/s. The
summary gives each system's highest offered deliveries/s whose p99 stayed under 20 ms with every
frame delivered. The report and charts land in bench/reports/ and docs/perf/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import (
    BENCH_SECRET,
    ROOT,
    CpuMeter,
    Histogram,
    Stack,
    install_cleanup,
    log,
    machine,
    proc_cpu_s,
    proc_rss_kib,
    proc_system_cpu_s,
    raise_nofile,
    stop,
    write_report,
)
from bench.fanout import ClientPool, Profile, bench_channels
from bench.peer import systems
from bench.peer.emitters import make_emitter
from bench.peer.sources import DirectSource, RestSource

CLIENT_BUSY_PERCENT = 85.0  # a client process above this share of a core may have been the limit
STALL_S = 3.0  # drain ends when no frame arrived for this long
GIVE_UP_P99_MS = 15_000.0  # past this a system is saturated: higher steps are skipped, not run
HEADLINE_P99_MS = 20.0  # the summary's capacity: the highest step with p99 under this and nothing lost


@dataclass
class Plan:
    clients: int = 2000
    rooms: int = 10
    processes: int = 2
    rates: tuple[int, ...] = (10, 25, 50, 100)
    phase_s: float = 10.0
    warmup_s: float = 2.0
    drain_max_s: float = 15.0
    big_clients: int = 10_000  # 0: no 10,000-connection step
    big_deliveries_per_s: int = 2000  # at 10,000 clients: 2 events/s into rooms of 1,000
    big_phase_s: float = 10.0
    connect_timeout_s: float = 150.0  # a server that cannot take 10,000 handshakes in this time is reported so

    @classmethod
    def pick(cls, quick: bool) -> Plan:
        if quick:
            return cls(phase_s=3.0, warmup_s=1.0, drain_max_s=6.0, big_clients=0)
        return cls()


def _cpu(pids: list[int]) -> list[float]:
    return [proc_cpu_s(pid) for pid in pids]


def _server_cpu_s(pids: list[int]) -> float:
    """CPU-seconds of a system's server processes, summed (one for most, two for `dms-2`)."""
    return sum(_cpu(pids))


def _server_rss_kib(pids: list[int]) -> float:
    return sum(proc_rss_kib(pid) for pid in pids)


def _drain(pool: ClientPool, before: int, expected: int, max_s: float) -> tuple[int, float]:
    """Wait (bounded) until the clients hold `expected` more frames or nothing arrives for STALL_S."""
    started = time.monotonic()
    last, last_change = -1, started
    while True:
        frames = pool.report()[0] - before
        now = time.monotonic()
        if frames != last:
            last, last_change = frames, now
        if frames >= expected or now - last_change > STALL_S or now - started > max_s:
            return frames, round(now - started, 2)
        time.sleep(0.25)


def _ms_per_1000(cpu_s: float, frames: int) -> float | None:
    return round(1e6 * cpu_s / frames, 2) if frames else None


def run_system(system: str, stack: Stack, plan: Plan, *, source_kind: str, api_url: str, token: str,
               products: list[str], support: dict[str, int], clients: int, rates: tuple[int, ...],
               phase_s: float, step: str) -> dict[str, Any]:
    """One system, one client count: fresh server, weigh it idle, step through the rates, account for every id."""
    channels = bench_channels(plan.rooms)
    running = systems.start(system, stack, feeder=source_kind == "rest")
    name = f"{system} {step}"
    try:
        if source_kind == "rest":
            source: RestSource | DirectSource = RestSource(api_url=api_url, token=token, channels=channels,
                                                           products=products, database_url=stack.database_url)
        else:
            first = RestSource(api_url=api_url, token=token, channels=channels, products=products,
                               database_url=stack.database_url).mark() + 1
            source = DirectSource(emitter=make_emitter(system, stack.redis_url), channels=channels, first_id=first)
        server_pids = running.pids
        time.sleep(1.0)  # let a fresh interpreter finish its imports before weighing it
        rss_before = _server_rss_kib(server_pids)
        server_cpu_before_connect = _server_cpu_s(server_pids)
        started = time.monotonic()
        profile = Profile(clients=clients, channels=plan.rooms, processes=plan.processes, rates=list(rates),
                          phase_s=phase_s, fixed_rate=rates[0])
        pool = ClientPool.start(kind=running.kind, url=running.url, profile=profile, channels=channels,
                                connect_timeout_s=plan.connect_timeout_s,
                                # Handshakes in flight per client process: more for the big step, so a
                                # server that answers slowly (not busily) is not held to 128 at a time.
                                connect_concurrency=64 if clients <= 2000 else 256)
        try:
            connected, failed = pool.ready()
            connect_s = time.monotonic() - started
            # Who was busy while connecting: a slow connect is the server's only if the clients were not.
            connect_cpu = {"server_percent": round(100 * (_server_cpu_s(server_pids) - server_cpu_before_connect)
                                                   / max(connect_s, 1e-6), 1),
                           "client_percent": [round(100 * cpu / max(connect_s, 1e-6), 1) for cpu in _cpu(pool.pids)]}
            time.sleep(2.0)  # buffers and lazily built state settle before the server is weighed
            rss_after = _server_rss_kib(server_pids)
            per_conn = round((rss_after - rss_before) / connected, 1) if connected else None
            log(f"{name}: {connected}/{clients} connected ({failed} failed) in {connect_s:.1f}s (CPU {connect_cpu}); "
                f"server RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB = {per_conn} KiB per connection")
            split = (systems.connection_split(stack.redis_url, running.gateway_ids, connected)
                     if running.gateway_ids else None)
            if split is not None:
                log(f"{name}: connections per gateway process (the kernel's SO_REUSEPORT spread): {split}")
            result: dict[str, Any] = {
                "system": system, "step": step, "clients": clients, "connected": connected,
                "connect_failures": failed, "connect_s": round(connect_s, 1), "connect_cpu": connect_cpu,
                "rooms": plan.rooms, "client_processes": plan.processes, "server_processes": len(server_pids),
                "memory": {"rss_mb_fresh": round(rss_before / 1024, 1), "rss_mb_connected": round(rss_after / 1024, 1),
                           "kib_per_connection": per_conn},
                "held_all_connections": connected == clients, "connections_per_process": split, "phases": [],
            }
            if connected == 0:
                result["note"] = "no client could connect"
                return result
            mark = source.mark()

            def frames_for(per_channel: dict[str, int]) -> int:
                """Frames owed for these events per channel: one per connected client of the room."""
                return sum(count * pool.rooms.get(channel, 0) for channel, count in per_channel.items())

            # Warm-up: first-use costs (pools, caches, JIT) are not measured; its frames still count as ids.
            warm_from = pool.report()[0]
            warm = source.run(rates[0], plan.warmup_s)
            _drain(pool, warm_from, frames_for(warm["per_channel"]), plan.drain_max_s)
            frames_before = pool.report()[0]
            meter = CpuMeter({**support, **{f"feeder{n}": p.pid for n, p in enumerate(running.helpers)}})
            total_cpu, total_kernel, total_frames = 0.0, 0.0, 0
            for rate in rates:
                phase = f"{step}-r{rate}"
                pool.send(f"phase {phase}")
                meter.reset()
                server0, clients0, wall0 = _server_cpu_s(server_pids), _cpu(pool.pids), time.monotonic()
                kernel0 = sum(proc_system_cpu_s(pid) for pid in server_pids)
                sent = source.run(rate, phase_s)
                expected = frames_for(sent["per_channel"])
                delivered, drain_s = _drain(pool, frames_before, expected, plan.drain_max_s)
                wall = time.monotonic() - wall0
                server_cpu = _server_cpu_s(server_pids) - server0
                server_kernel = sum(proc_system_cpu_s(pid) for pid in server_pids) - kernel0
                client_pct = [round(100 * (b - a) / wall, 1) for a, b in zip(clients0, _cpu(pool.pids), strict=True)]
                _, _, hists = pool.report()
                hist = hists.get(phase, Histogram())
                frames_before += delivered
                total_cpu, total_frames = total_cpu + server_cpu, total_frames + delivered
                total_kernel += server_kernel
                row = {
                    "events_per_s": rate, "target_deliveries_per_s": round(rate * connected / plan.rooms),
                    "achieved_events_per_s": sent["achieved_events_per_s"], "post_failures": sent["post_failures"],
                    "post_latency": sent["post_latency"], "expected_frames": expected, "delivered_frames": delivered,
                    "delivered_per_s": round(delivered / wall, 1), "drain_s": drain_s, "latency": hist.summary(),
                    "server_cpu_s": round(server_cpu, 3), "server_cpu_percent": round(100 * server_cpu / wall, 1),
                    "server_cpu_ms_per_1000_frames": _ms_per_1000(server_cpu, delivered),
                    # The kernel's part (system time): sends, wake-ups, epoll; the rest is the server's own code.
                    "server_kernel_ms_per_1000_frames": _ms_per_1000(server_kernel, delivered),
                    "client_cpu_percent": client_pct, "clients_may_be_limit": max(client_pct) > CLIENT_BUSY_PERCENT,
                    "support_cpu_percent": meter.percent(),
                    "server_rss_mb": round(_server_rss_kib(server_pids) / 1024, 1),
                }
                result["phases"].append(row)
                log(f"{name}: {rate} ev/s ({row['target_deliveries_per_s']}/s) -> {delivered}/{expected} frames, "
                    f"p50/p99 {hist.percentile(50)}/{hist.percentile(99)} ms, server "
                    f"{row['server_cpu_ms_per_1000_frames']} ms CPU per 1,000 frames, "
                    f"{row['server_kernel_ms_per_1000_frames']} of it in the kernel ({row['server_cpu_percent']}%), "
                    f"clients {client_pct}%")
                p99 = hist.percentile(99)
                if p99 is None or p99 > GIVE_UP_P99_MS or delivered < 0.5 * expected:
                    result["saturated_at_events_per_s"] = rate
                    log(f"{name}: saturated at {rate} events/s; higher steps skipped")
                    break
            result["server_cpu_ms_per_1000_frames_all_steps"] = _ms_per_1000(total_cpu, total_frames)
            result["server_kernel_ms_per_1000_frames_all_steps"] = _ms_per_1000(total_kernel, total_frames)
            expected_ids = source.written_since(mark)
            owed = frames_for({channel: len(ids) for channel, ids in expected_ids.items()})
            # A last bounded wait for frames still queued. `missing` counts ids not received by its
            # end: for a saturated system that may include frames still queued, not only lost ones.
            _drain(pool, 0, owed, plan.drain_max_s)
            result["delivery"] = pool.finish(expected_ids)
            result["delivery"]["expected"] = owed
            log(f"{name}: delivery {result['delivery']}")
            return result
        finally:
            for proc in pool.procs:
                stop(proc, timeout_s=5)
    finally:
        running.stop()


def capacity(result: dict[str, Any], p99_ms: float = HEADLINE_P99_MS) -> dict[str, Any] | None:
    """The highest step whose p99 stayed under `p99_ms` with every expected frame delivered (None: no such step).

    Offered deliveries/s is the step's target (events/s x subscribers per room); every frame of the
    step arrived, so it was carried. The answer is only as fine as the steps in --rates.
    """
    passed = [p for p in result.get("phases", [])
              if p["latency"]["p99_ms"] is not None and p["latency"]["p99_ms"] < p99_ms
              and p["delivered_frames"] >= p["expected_frames"] > 0]
    if not passed:
        return None
    best = max(passed, key=lambda p: p["target_deliveries_per_s"])
    return {"deliveries_per_s": best["target_deliveries_per_s"], "events_per_s": best["events_per_s"],
            "delivered_per_s": best["delivered_per_s"], "p99_ms": best["latency"]["p99_ms"],
            "cpu_ms_per_1000_frames": best["server_cpu_ms_per_1000_frames"],
            "server_cpu_percent": best["server_cpu_percent"]}


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline ratios against ours; for cost and latency, > 1 means ours is better."""
    main = {r["system"]: r for r in results if r.get("step") == "main" and r.get("phases")}
    ours = main.get("dms")
    ours_capacity = capacity(ours) if ours is not None else None
    out: dict[str, Any] = {}
    for system, result in main.items():
        entry: dict[str, Any] = {
            "server_processes": result.get("server_processes", 1),
            f"capacity_p99_under_{HEADLINE_P99_MS:g}ms": capacity(result),
            "kib_per_connection": result["memory"]["kib_per_connection"],
            "cpu_ms_per_1000_frames": {str(p["target_deliveries_per_s"]): p["server_cpu_ms_per_1000_frames"]
                                       for p in result["phases"]},
            "cpu_ms_per_1000_frames_all_steps": result["server_cpu_ms_per_1000_frames_all_steps"],
            "kernel_ms_per_1000_frames_all_steps": result.get("server_kernel_ms_per_1000_frames_all_steps"),
            "p50_ms": {str(p["target_deliveries_per_s"]): p["latency"]["p50_ms"] for p in result["phases"]},
            "p99_ms": {str(p["target_deliveries_per_s"]): p["latency"]["p99_ms"] for p in result["phases"]},
            "lost": result["delivery"]["missing"], "duplicated": result["delivery"]["duplicated"],
        }
        if ours is not None and system != "dms":
            mine, theirs = ours["server_cpu_ms_per_1000_frames_all_steps"], entry["cpu_ms_per_1000_frames_all_steps"]
            entry["cpu_theirs_over_ours"] = round(theirs / mine, 2) if mine and theirs else None
            mem_ours, mem = ours["memory"]["kib_per_connection"], entry["kib_per_connection"]
            entry["memory_theirs_over_ours"] = round(mem / mem_ours, 2) if mem and mem_ours and mem_ours > 0 else None
        if result.get("connections_per_process"):
            entry["connections_per_process"] = result["connections_per_process"]
        if system == systems.DMS_TWO:
            mine = entry[f"capacity_p99_under_{HEADLINE_P99_MS:g}ms"]
            entry["capacity_over_dms"] = (round(mine["deliveries_per_s"] / ours_capacity["deliveries_per_s"], 2)
                                          if mine and ours_capacity else None)
        out[system] = entry
    for result in results:
        if result.get("step") == "big" and result.get("phases") is not None:
            out.setdefault(result["system"], {})["big"] = {
                "clients": result["clients"], "connected": result["connected"],
                "kib_per_connection": result["memory"]["kib_per_connection"],
                "p99_ms": result["phases"][0]["latency"]["p99_ms"] if result["phases"] else None,
                "cpu_ms_per_1000_frames": result["phases"][0]["server_cpu_ms_per_1000_frames"]
                if result["phases"] else None,
                "lost": result.get("delivery", {}).get("missing")}
    return out


def summary_lines(comparison: dict[str, Any]) -> list[str]:
    """One line per system: its capacity at p99 under 20 ms, what that cost, and dms-2 against dms."""
    lines = []
    key = f"capacity_p99_under_{HEADLINE_P99_MS:g}ms"
    for system, entry in comparison.items():
        if key not in entry:
            continue
        best = entry[key]
        processes = entry.get("server_processes", 1)
        head = f"{system} ({processes} server process{'es' if processes != 1 else ''})"
        if best is None:
            lines.append(f"summary: {head}: no step had p99 under {HEADLINE_P99_MS:g} ms with every frame delivered; "
                         f"lost {entry['lost']}")
            continue
        line = (f"summary: {head}: {best['deliveries_per_s']} deliveries/s ({best['events_per_s']} events/s) "
                f"with p99 {best['p99_ms']} ms < {HEADLINE_P99_MS:g} ms, server CPU "
                f"{best['cpu_ms_per_1000_frames']} ms per 1,000 frames ({best['server_cpu_percent']}% of a core); "
                f"all steps {entry['cpu_ms_per_1000_frames_all_steps']} ms per 1,000 frames; lost {entry['lost']}")
        if "capacity_over_dms" in entry:
            line += f"; {entry['capacity_over_dms']}x dms's deliveries/s"
        lines.append(line)
    return lines


def charts(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    latency: dict[str, list[tuple[float, float]]] = {}
    cost: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        if result.get("step") != "main" or not result.get("phases"):
            continue
        for pct in ("p50", "p99"):
            latency[f"{result['system']} {pct}"] = [(p["target_deliveries_per_s"], p["latency"][f"{pct}_ms"])
                                                    for p in result["phases"]]
        cost[result["system"]] = [(p["target_deliveries_per_s"], p["server_cpu_ms_per_1000_frames"])
                                  for p in result["phases"]]
    return [
        ("", {"title": "commit-to-client latency", "x_label": "deliveries/s offered",
              "y_label": "ms (log)", "series": latency, "log_y": True}),
        ("-cpu", {"title": "server CPU per 1,000 delivered frames", "x_label": "deliveries/s offered",
                  "y_label": "CPU ms", "series": cost}),
    ]


def publish(paths: list[Any], name: str) -> None:
    """Copy the run's JSON and PNGs to docs/perf/<name>*, the versions the docs point at."""
    target = ROOT / "docs" / "perf"
    for path in paths:
        if path.suffix in (".json", ".png"):
            stamp_free = path.name.split("-", 1)[1].split("Z", 1)[1]  # drop `peer3-<timestamp>Z`
            dest = target / f"{name}{stamp_free}"
            shutil.copyfile(path, dest)
            log(f"wrote {dest.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps, no 10,000-connection step (~2 min)")
    parser.add_argument("--source", choices=("rest", "redis"), default="rest",
                        help="rest: POST /api/orders -> outbox -> relay/feeder -> Redis (default); "
                             "redis: publish straight to each system's Redis channel")
    parser.add_argument("--systems", default=",".join(systems.SYSTEMS),
                        help="comma list of systems to run; dms-relay-inside runs ours as `dms up` does, "
                             "the relay inside the gateway; dms-2 runs two gateway processes sharing one port "
                             "(GATEWAY_REUSE_PORT), CPU and memory summed over both")
    parser.add_argument("--clients", type=int, help="subscribers in the main steps (default 2000)")
    parser.add_argument("--rates", help="comma list of events/s (default 10,25,50,100); deliveries/s are "
                                        "events/s x subscribers per room (200 with the defaults)")
    parser.add_argument("--big", type=int, help="clients in the big step; 0 skips it (default 10000, quick 0)")
    parser.add_argument("--publish", default=None,
                        help="name under docs/perf/ (default peer3, quick peer3-quick; 'none' to skip)")
    args = parser.parse_args(argv)
    install_cleanup()
    plan = Plan.pick(args.quick)
    if args.clients:
        plan.clients = args.clients
    if args.rates:
        plan.rates = tuple(int(rate) for rate in args.rates.split(","))
    if args.big is not None:
        plan.big_clients = args.big
    wanted = [s for s in args.systems.split(",") if s]
    unknown = set(wanted) - set(systems.SYSTEMS) - set(systems.EXTRA)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    nofile = raise_nofile()
    info = {**machine(), "open_files_limit": nofile}
    log(f"machine: {info}")
    skipped: dict[str, str] = {}
    if "node-socketio" in wanted and (reason := systems.node_available()):
        log(f"node-socketio: skipped ({reason})")
        skipped["node-socketio"] = reason
        wanted.remove("node-socketio")
    if "node-socketio" in wanted:
        try:
            systems.install_node_peer()
        except (RuntimeError, OSError, TimeoutError) as exc:
            log(f"node-socketio: skipped ({exc})")
            skipped["node-socketio"] = str(exc)
            wanted.remove("node-socketio")
    started = time.monotonic()
    stack = Stack.start(seed=True)
    results: list[dict[str, Any]] = []
    helpers = []
    try:
        _prepare_rooms(stack.database_url, bench_channels(plan.rooms))
        from common.auth import mint_token
        from devstack.seed import DEMO, demo_id

        token = mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin, ttl_s=3 * 3600)
        products = [demo_id(f"product:{n}") for n in range(1000) if n % 25 != 0]
        api, api_url = systems.start_api(stack)
        helpers.append(api)
        support = {**stack.pids, "api": api.pid}
        for system in wanted:
            relay = None
            if system in systems.SEPARATE_RELAY and args.source == "rest":
                relay = systems.start_relay(stack)
                support["relay"] = relay.pid
            try:
                common = {"source_kind": args.source, "api_url": api_url, "token": token, "products": products,
                          "support": {k: v for k, v in support.items()
                                      if k != "relay" or system in systems.SEPARATE_RELAY}}
                results.append(run_system(system, stack, plan, clients=plan.clients, rates=plan.rates,
                                          phase_s=plan.phase_s, step="main", **common))
                if plan.big_clients:
                    big_rate = max(1, round(plan.big_deliveries_per_s * plan.rooms / plan.big_clients))
                    results.append(run_system(system, stack, plan, clients=plan.big_clients, rates=(big_rate,),
                                              phase_s=plan.big_phase_s, step="big", **common))
            except (RuntimeError, OSError, ValueError) as exc:
                # One system failing (a crash, a refused step) is a result to report, not the end of the run.
                log(f"{system}: failed: {exc}")
                results.append({"system": system, "error": str(exc)})
            finally:
                if relay is not None:
                    stop(relay)
                    support.pop("relay", None)
    finally:
        for proc in helpers:
            stop(proc)
        stack.stop()
    body = {"benchmark": "peer3", "plan": asdict(plan), "source": args.source, "machine": info,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "duration_s": round(time.monotonic() - started),
            "skipped": skipped, "comparison": compare(results), "results": results}
    log(f"comparison: {json.dumps(body['comparison'])}")
    for line in summary_lines(body["comparison"]):
        log(line)
    paths = write_report("peer3", body, charts(results))
    for path in paths:
        log(f"wrote {path.relative_to(ROOT)}")
    name = args.publish or ("peer3-quick" if args.quick else "peer3")
    if args.source == "redis" and args.publish is None:
        name += "-redis"
    if name != "none":
        publish(paths, name)
    return 0


def _prepare_rooms(database_url: str, channels: list[str]) -> None:
    """One restaurant per room, so POST /api/orders lands each order on a subscribed channel."""
    from common.db import connect

    with connect(database_url) as conn, conn.transaction():
        for n, channel in enumerate(channels):
            conn.execute("INSERT INTO restaurants (id, name, address) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                         (channel.split(":", 1)[1], f"Bench room {n}", f"{n} Bench Street"))


if __name__ == "__main__":
    raise SystemExit(main())
