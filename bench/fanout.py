"""Fan-out benchmark: one gateway, thousands of WebSocket clients in other processes, rising event rates.

Events go through the real outbox path (`common.events.write_event`, one transaction each), so the
latency measured is commit -> NOTIFY -> relay -> Redis -> hub -> socket -> client. Run
`python -m bench.fanout [--quick]`; the report lands in bench/reports/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    BENCH_SECRET,
    CpuMeter,
    Histogram,
    Stack,
    install_cleanup,
    log,
    machine,
    python_module,
    rss_mb,
    stop,
    wait_http,
    write_report,
)
from devstack.seed import demo_id

P99_LIMIT_MS = 100.0
GIVE_UP_P99_MS = 2000.0


@dataclass
class Profile:
    clients: int
    channels: int
    processes: int
    rates: list[int]
    phase_s: float
    fixed_rate: int  # the rate at which the peer comparison quotes p99

    @classmethod
    def pick(cls, quick: bool) -> Profile:
        if quick:
            return cls(clients=500, channels=10, processes=1, rates=[10, 40, 100], phase_s=5, fixed_rate=40)
        return cls(clients=2000, channels=20, processes=2, rates=[5, 10, 20, 40, 80, 160], phase_s=10,
                   fixed_rate=40)


@dataclass
class ClientPool:
    """The harness: N processes of gevent clients, commanded over pipes."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rooms: dict[str, int] = field(default_factory=dict)  # connected clients per channel, after ready()

    @classmethod
    def start(cls, *, kind: str, url: str, profile: Profile, channels: list[str],
              connect_timeout_s: float = 120.0, connect_concurrency: int = 64) -> ClientPool:
        pool = cls()
        per_proc = -(-profile.clients // profile.processes)
        for index in range(profile.processes):
            count = min(per_proc, profile.clients - index * per_proc)
            config = {"kind": kind, "url": url, "secret": BENCH_SECRET, "count": count, "channels": channels,
                      "offset": index * per_proc, "connect_timeout_s": connect_timeout_s,
                      "connect_concurrency": connect_concurrency}
            pool.procs.append(python_module("bench.wsclients", json.dumps(config), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE))
        return pool

    def _read(self) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client process exited ({proc.poll()})")
            out.append(json.loads(line))
        return out

    def send(self, command: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write((command + "\n").encode())
            proc.stdin.flush()

    def ready(self) -> tuple[int, int]:
        replies = self._read()
        for reply in replies:
            for channel, count in reply.get("rooms", {}).items():
                self.rooms[channel] = self.rooms.get(channel, 0) + count
        return sum(r["ready"] for r in replies), sum(r["failed"] for r in replies)

    def report(self) -> tuple[int, int, dict[str, Histogram]]:
        self.send("report")
        frames, reconnects, hists = 0, 0, {}
        for reply in self._read():
            frames += reply["frames"]
            reconnects += reply["reconnects"]
            for phase, counts in reply["hists"].items():
                hists.setdefault(phase, Histogram()).merge(counts)
        return frames, reconnects, hists

    def finish(self, expected: dict[str, list[int]]) -> dict[str, int]:
        self.send("finish " + json.dumps(expected))
        totals: dict[str, int] = {}
        for reply in self._read():
            for key, value in reply["accounting"].items():
                totals[key] = totals.get(key, 0) + value
        for proc in self.procs:
            stop(proc, timeout_s=10)
        return totals

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]


class Writer:
    """Commits events through the outbox at a paced rate, remembering ids per channel."""

    def __init__(self, database_url: str, channels: list[str]) -> None:
        from common.db import connect

        self.conn = connect(database_url)
        self.channels = channels
        self.written: dict[str, list[int]] = {channel: [] for channel in channels}
        self._drafts: list[tuple[str, Any]] = []  # ids are assigned at commit: resolved after a run
        self.sequence = 0

    def run(self, rate: float, seconds: float) -> float:
        """Write `rate` events/s for `seconds`; returns the rate actually achieved."""
        from common.events import ORDER_STATUS_CHANGED, committed_ids, write_event

        total = int(rate * seconds)
        started = time.monotonic()
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            channel = self.channels[self.sequence % len(self.channels)]
            self.sequence += 1
            # An order-shaped payload, so frame sizes match real traffic (~350 bytes).
            data = {"order_id": demo_id(f"bench-order:{self.sequence}"), "restaurant_id": channel.split(":")[1],
                    "status": "preparing", "previous_status": "confirmed", "driver_id": None, "version": 3,
                    "total_amount": "123.45", "updated_at": "2024-01-01T00:00:00Z", "request_id": "bench"}
            with self.conn.transaction():
                draft = write_event(self.conn, event=ORDER_STATUS_CHANGED, channels=[channel], data=data)
            self._drafts.append((channel, draft))
        achieved = total / max(time.monotonic() - started, 1e-6)
        with self.conn.transaction():
            ids = committed_ids(self.conn, [draft for _, draft in self._drafts])
        for (channel, _), event_id in zip(self._drafts, ids, strict=True):
            self.written[channel].append(int(event_id) if event_id is not None else -1)
        self._drafts.clear()
        return achieved

    def close(self) -> None:
        self.conn.close()


def bench_channels(count: int) -> list[str]:
    return [f"restaurant:{demo_id(f'bench-room:{n}')}" for n in range(count)]


def run_scenario(*, name: str, kind: str, url: str, server_pids: dict[str, int], stack: Stack,
                 profile: Profile) -> dict[str, Any]:
    """Connect the clients, step through the rates, account for every event; one server's result."""
    channels = bench_channels(profile.channels)
    server_pid = server_pids["server"]
    rss_before = rss_mb(server_pid)
    started = time.monotonic()
    pool = ClientPool.start(kind=kind, url=url, profile=profile, channels=channels)
    connected, failed = pool.ready()
    connect_s = time.monotonic() - started
    time.sleep(1.0)  # let the server settle its buffers before weighing it
    rss_after = rss_mb(server_pid)
    log(f"{name}: {connected} clients connected ({failed} failed) in {connect_s:.1f}s; "
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    writer = Writer(stack.database_url, channels)
    meter = CpuMeter({**server_pids, "clients": pool.pids, **{k: v for k, v in stack.pids.items()}})
    subscribers_per_channel = connected / profile.channels
    phases = []
    try:
        # Warm-up at the lowest rate (first-use costs: pool connections, caches), not measured.
        writer.run(profile.rates[0], 2.0)
        time.sleep(1.0)
        frames_before = pool.report()[0]
        for rate in profile.rates:
            pool.send(f"phase r{rate}")
            meter.reset()
            phase_start = time.monotonic()
            achieved = writer.run(rate, profile.phase_s)
            time.sleep(1.0)  # drain: latencies of the last events still count for this phase
            wall = time.monotonic() - phase_start
            cpu = meter.percent()
            frames, reconnects, hists = pool.report()
            hist = hists.get(f"r{rate}", Histogram())
            delivered = frames - frames_before
            frames_before = frames
            phase = {"events_per_s": rate, "achieved_events_per_s": round(achieved, 1),
                     "expected_frames": int(rate * profile.phase_s * subscribers_per_channel),
                     "delivered_frames": delivered, "delivered_frames_per_s": round(delivered / wall, 1),
                     "latency": hist.summary(), "cpu_percent": cpu, "reconnects_so_far": reconnects,
                     "server_rss_mb": round(rss_mb(server_pid), 1)}
            phases.append(phase)
            log(f"{name}: {rate} ev/s -> {phase['delivered_frames_per_s']:.0f} frames/s, p50/p95/p99 "
                f"{hist.percentile(50)}/{hist.percentile(95)}/{hist.percentile(99)} ms, cpu {cpu}")
            p99 = hist.percentile(99)
            if p99 is None or p99 > GIVE_UP_P99_MS:
                log(f"{name}: saturated at {rate} events/s; not rising further")
                break
        time.sleep(2.0)
        accounting = pool.finish(writer.written)
    finally:
        writer.close()
        for proc in pool.procs:
            stop(proc, timeout_s=5)
    log(f"{name}: delivery {accounting}")
    sustained = [p for p in phases if p["latency"]["p99_ms"] is not None and p["latency"]["p99_ms"] < P99_LIMIT_MS
                 and p["delivered_frames"] >= 0.99 * p["expected_frames"]]
    fixed = next((p for p in phases if p["events_per_s"] == profile.fixed_rate), None)
    return {
        "server": name, "clients": connected, "connect_failures": failed, "connect_s": round(connect_s, 1),
        "channels": profile.channels, "subscribers_per_channel": round(subscribers_per_channel, 1),
        "server_rss_mb": {"before": round(rss_before, 1), "after_connect": round(rss_after, 1)},
        "rss_kib_per_connection": round((rss_after - rss_before) * 1024 / max(connected, 1), 1),
        "phases": phases, "delivery": accounting,
        "sustained_frames_per_s_at_p99_under_100ms": max((p["delivered_frames_per_s"] for p in sustained),
                                                         default=0.0),
        "p99_ms_at_fixed_rate": fixed["latency"]["p99_ms"] if fixed else None,
        "fixed_rate_events_per_s": profile.fixed_rate,
    }


def start_gateway(stack: Stack, tmp_log: Any) -> tuple[subprocess.Popen[bytes], str]:
    from devstack.embedded import free_port

    port = free_port()
    proc = python_module("gateway", env=stack.env(GATEWAY_PORT=str(port), GATEWAY_ID="bench-gw",
                                                  WS_PING_INTERVAL="60", WS_MAX_SUBSCRIPTIONS="50"),
                         log=tmp_log)
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, f"ws://127.0.0.1:{port}/ws"


def charts(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    latency: dict[str, list[tuple[float, float]]] = {}
    throughput: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        for pct in ("p50", "p99"):
            latency[f"{result['server']} {pct}"] = [
                (p["events_per_s"], p["latency"][f"{pct}_ms"]) for p in result["phases"]]
        throughput[result["server"]] = [(p["events_per_s"], p["delivered_frames_per_s"]) for p in result["phases"]]
    return [
        ("", {"title": "commit-to-client latency", "x_label": "events/s written", "y_label": "ms (log)",
              "series": latency, "log_y": True}),
        ("-throughput", {"title": "delivered frames/s", "x_label": "events/s written", "y_label": "frames/s",
                         "series": throughput}),
    ]


def profile_arguments(parser: argparse.ArgumentParser, *, quick_help: str) -> None:
    """The options both fan-out benchmarks take."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--clients", type=int, help="WebSocket clients (default: the profile's)")
    parser.add_argument("--rates", help="comma list of events/s steps, e.g. 80,160,320 (default: the profile's)")


def profile_from(args: argparse.Namespace) -> Profile:
    profile = Profile.pick(args.quick)
    if args.clients:
        profile.clients = args.clients
    if args.rates:
        profile.rates = [int(rate) for rate in args.rates.split(",")]
    return profile


def run_dms(stack: Stack, profile: Profile) -> dict[str, Any]:
    """The scenario against one of our gateway processes, stopped afterwards."""
    gateway, url = start_gateway(stack, stack.tmp / "gateway.log")
    try:
        return run_scenario(name="dms", kind="dms", url=url, server_pids={"server": gateway.pid}, stack=stack,
                            profile=profile)
    finally:
        stop(gateway)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    profile_arguments(parser, quick_help="500 clients, three short steps (under 2 minutes)")
    args = parser.parse_args(argv)
    install_cleanup()
    profile = profile_from(args)
    info = machine()
    log(f"machine: {info}")
    stack = Stack.start(seed=False)
    try:
        result = run_dms(stack, profile)
    finally:
        stack.stop()
    body = {"benchmark": "fanout", "profile": profile.__dict__, "machine": info,
            "loadavg_after": [round(x, 2) for x in __import__("os").getloadavg()], "results": [result]}
    for path in write_report("fanout", body, charts([result])):
        log(f"wrote {path}")
    lost = result["delivery"].get("missing", 0) + result["delivery"].get("duplicated", 0) + result["delivery"].get(
        "out_of_order", 0)
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
