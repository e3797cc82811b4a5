"""Reconnect storm: N subscribers through nginx over two gateways, orders flowing, the busiest gateway killed.

`python -m bench.storm [--clients 20000] [--mode kill|drain|handshakes]` (`make bench-storm`).
The stack is built like `dms up --api 1 --gateways 2`: embedded PostgreSQL (pg_stat_statements)
and Redis, one API, two gateways, nginx in front sized by `devstack.nginx.fleet_site` for the
clients. Subscribers (one `DmsClient` each, in greenlets, in several processes,
`bench.stormclients`) spread over 10 restaurant channels; orders go through POST /api/orders at
20/s. Then the gateway holding most connections gets `kill -9` (`--mode kill`) or SIGTERM and
drains (`--mode drain`), and the benchmark restarts it on the same port 0.5 s after it exited, as
`dms up`'s supervision does (first backoff 0.5 s). Clients back off as dms_client does, with full
jitter (base 0.5 s, cap 15 s), honour Retry-After and resubscribe with `since`. Report: dropped
clients, time until each is subscribed again, refusals by kind, lost and duplicated events per
subscriber, PostgreSQL statements and Redis commands during the storm, gateway CPU, and a chart of
connected clients per gateway.
`--mode handshakes` instead opens connections as fast as it can against one gateway directly
(no nginx) and reports handshakes admitted per second and gateway CPU per handshake.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    BENCH_SECRET,
    Stack,
    install_cleanup,
    log,
    machine,
    percentiles,
    proc_cpu_s,
    python_module,
    raise_nofile,
    stop,
    wait_http,
    write_report,
)
from common.auth import mint_token
from devstack import embedded, nginx
from devstack.seed import DEMO, demo_id

CHANNELS = 10
ORDER_RATE = 20.0
CLIENTS_PER_PROCESS = 7000  # well under one process's 20,000 descriptors, and one core's worth of frames
RESTART_AFTER_S = 0.5  # dms up's first backoff after a crash
STEADY_S = 5.0  # orders flowing before the fault
SETTLE_S = 5.0  # after the last client is back, before stopping the orders
EXTRA_RESTAURANTS = [(demo_id(f"storm-restaurant:{n}"), f"Storm Kitchen {n}", f"{n} Storm Street") for n in range(10)]
# Replays read one channel's events (`channels @> ...`: the gateways' shared and own reads); the
# relay's reads of new events (`WHERE id > ...`) are counted apart.
_REPLAY_SQL = "SELECT id, channels, event, data, created_at FROM events WHERE channels @>%"


# -- processes ------------------------------------------------------------------------------------
@dataclass
class Gateways:
    """The two gateways, restarted on their ports after they exit (as `dms up` does)."""

    stack: Stack
    ports: list[int]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    restarted_at: dict[int, float] = field(default_factory=dict)  # index -> monotonic time it was ready

    def env(self, index: int) -> dict[str, str]:
        return self.stack.env(GATEWAY_PORT=str(self.ports[index]), GATEWAY_ID=f"gw-{index}")

    def start(self, index: int) -> subprocess.Popen[bytes]:
        proc = python_module("gateway", env=self.env(index), log=self.logs / f"gateway-{index}.log")
        if index < len(self.procs):
            self.procs[index] = proc
        else:
            self.procs.append(proc)
        return proc

    def health(self, index: int) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.ports[index]}/health"
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return dict(json.loads(response.read()))
        except (OSError, ValueError, urllib.error.HTTPError):
            return None

    def supervise(self, index: int, done: threading.Event) -> None:
        """Wait for the gateway to exit, restart it RESTART_AFTER_S later, note when it answers."""
        proc = self.procs[index]
        while proc.poll() is None and not done.is_set():
            time.sleep(0.05)
        if done.is_set():
            return
        exited = time.monotonic()
        time.sleep(RESTART_AFTER_S)
        new = self.start(index)
        wait_http(f"http://127.0.0.1:{self.ports[index]}/health", proc=new, timeout_s=60)
        self.restarted_at[index] = time.monotonic()
        log(f"gw-{index} restarted, answering {self.restarted_at[index] - exited:.1f}s after it exited")


class Pool:
    """Client processes; their status lines are read by one thread each."""

    def __init__(self, clients: int, *, host: str, port: int, mode: str, channels: list[str],
                 concurrency: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.latest: list[dict[str, Any]] = []
        self.finals: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        count = max(1, math.ceil(clients / CLIENTS_PER_PROCESS))
        per = math.ceil(clients / count)
        for index in range(count):
            config = {"host": host, "port": port, "secret": BENCH_SECRET, "count": min(per, clients - index * per),
                      "channels": channels, "offset": index * per, "mode": mode, "base_s": 0.5, "cap_s": 15.0,
                      "concurrency": concurrency}
            self.procs.append(python_module("bench.stormclients", json.dumps(config), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE))
            self.latest.append({})
        for index, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(index, proc), daemon=True).start()

    def _read(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            body = json.loads(line)
            with self.lock:
                if "status" in body:
                    self.latest[index] = body["status"]
                else:
                    self.finals.append(body)

    def total(self, key: str) -> int:
        with self.lock:
            return sum(int(s.get(key, 0)) for s in self.latest)

    def refusals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for status in self.latest:
                for kind, count in status.get("refusals", {}).items():
                    out[kind] = out.get(kind, 0) + count
        return dict(sorted(out.items()))

    def send(self, command: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write((command + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass

    def finish(self, expected: dict[str, list[int]], timeout_s: float = 120) -> list[dict[str, Any]]:
        self.send("finish " + json.dumps(expected))
        deadline = time.monotonic() + timeout_s
        while len(self.finals) < len(self.procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in self.procs:
            stop(proc, timeout_s=10)
        return self.finals

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]


# -- measuring -----------------------------------------------------------------------------------
def pg_counts(database_url: str) -> dict[str, int]:
    from common.db import connect

    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) AS total,"
            " coalesce(sum(calls) FILTER (WHERE query LIKE %s), 0) AS replay,"
            " coalesce(sum(calls) FILTER (WHERE query ILIKE 'select%%' AND query ILIKE '%%from events%%'), 0)"
            " AS event_reads FROM pg_stat_statements", (_REPLAY_SQL,)).fetchone()
    assert row is not None
    return {"statements": int(row["total"]), "replay_selects": int(row["replay"]),
            "selects_on_events": int(row["event_reads"])}


def redis_counts(redis_url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def nginx_refusals(prefix: Path) -> dict[str, int]:
    """nginx's own answers for /ws: 503 with no gateway address is 'no live upstreams'."""
    access = (prefix / "logs" / "access.log").read_text(errors="replace").splitlines()
    errors = (prefix / "logs" / "error.log").read_text(errors="replace")
    ws = [line for line in access if '"GET /ws ' in line]
    return {
        "ws_requests_logged": len(ws),
        "ws_answered_by_nginx_itself": sum(1 for line in ws if "upstream=dms_gateway " in line),
        "ws_passed_on_to_another_gateway": sum(1 for line in ws if re.search(r"upstream=\S+, ", line)),
        # Every gateway tried failed (timeouts, refused connects): nginx's own 503 with Retry-After.
        "ws_503_after_every_gateway_failed": sum(
            1 for line in ws if '" 503 ' in line and "upstream=dms_gateway " not in line
            and not re.search(r"upstream_status=[^r]*\b(503|101)\b", line)),
        "no_live_upstreams": errors.count("no live upstreams"),
        "connect_timeouts": len(re.findall(r"timed out\) while connecting to upstream", errors)),
        "connections_not_enough": errors.count("worker_connections are not enough"),
    }


class Orders:
    """POST /api/orders at a steady rate through nginx, round robin over the channels' restaurants."""

    def __init__(self, base_url: str, restaurants: list[str]) -> None:
        self.base_url, self.restaurants = base_url, restaurants
        self.token = mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin, ttl_s=3 * 3600)
        self.sent = 0
        self.statuses: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, restaurant: str) -> str:
        body = json.dumps({"restaurant_id": restaurant,
                           "items": [{"product_id": demo_id("product:1"), "quantity": 1}]}).encode()
        request = urllib.request.Request(f"{self.base_url}/api/orders", data=body, method="POST", headers={  # noqa: S310
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                return str(response.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)
        except OSError as exc:
            return type(exc).__name__

    def _run(self) -> None:
        started = time.monotonic()
        while not self.done.is_set():
            delay = started + self.sent / ORDER_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            status = self._post(self.restaurants[self.sent % len(self.restaurants)])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.sent += 1

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=15)


def _cpu(pids: list[int]) -> float:
    return sum(proc_cpu_s(pid) for pid in pids)


def _seconds(values: list[float]) -> dict[str, float | None]:
    points = percentiles(values, (50, 99))
    return {"p50_s": points["p50"], "p99_s": points["p99"], "max_s": max(values) if values else None}


# -- the storm -----------------------------------------------------------------------------------
def prepare(stack: Stack) -> list[str]:
    from common.db import connect

    with connect(stack.database_url) as conn, conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for rid, name, address in EXTRA_RESTAURANTS:
            conn.execute("INSERT INTO restaurants (id, name, address) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                         (rid, name, address))
    return [rid for rid, _, _ in EXTRA_RESTAURANTS[:CHANNELS]]


def storm(args: argparse.Namespace, stack: Stack, work: Path) -> dict[str, Any]:
    restaurants = prepare(stack)
    channels = [f"restaurant:{rid}" for rid in restaurants]
    first_port = embedded.stable_free_port(count=3)
    api_port, gateway_ports = first_port, [first_port + 1, first_port + 2]
    api = python_module("api", env=stack.env(API_PORT=str(api_port), TRUSTED_PROXIES="127.0.0.1"),
                        log=work / "api.log")
    gateways = Gateways(stack, gateway_ports, work)
    for index in range(2):
        gateways.start(index)
    wait_http(f"http://127.0.0.1:{api_port}/ready", proc=api)
    for index, port in enumerate(gateway_ports):
        wait_http(f"http://127.0.0.1:{port}/health", proc=gateways.procs[index])
    site = nginx.fleet_site(expected_clients=args.clients, api_ports=(api_port,), gateway_ports=tuple(gateway_ports),
                            listen_port=embedded.free_port(), ws_error_log_level="error")
    ngx = nginx.start(site, work / "nginx")
    assert ngx.process is not None
    common.register_child(ngx.process)  # killed with the rest if the benchmark is stopped
    nginx_prefix = work / "nginx"
    log(f"nginx: {site.worker_processes} worker(s) x {site.worker_connections} connections, "
        f"{site.worker_rlimit_nofile} descriptors each; gateways on {gateway_ports}, API on {api_port}")

    timeline: list[dict[str, Any]] = []
    started = time.monotonic()
    fault_at: float | None = None
    sampling = threading.Event()
    pool = Pool(args.clients, host="127.0.0.1", port=site.listen_port, mode="subscribe", channels=channels,
                concurrency=args.concurrency)

    def sample() -> None:
        while not sampling.is_set():
            tick = time.monotonic()
            health = [gateways.health(i) for i in range(2)]
            point = {"t": round(tick - started, 2), "subscribed": pool.total("subscribed"),
                     "connected": pool.total("connected"), "drops": pool.total("drops"), "back": pool.total("back"),
                     "gateways": [h["connections"] if h and "connections" in h else None for h in health],
                     "refused": sum(pool.refusals().values())}
            timeline.append(point)
            since = f" t+{tick - fault_at:5.1f}s" if fault_at is not None else ""
            log(f"[{args.mode}{since}] subscribed {point['subscribed']}/{args.clients}, per gateway "
                f"{point['gateways']}, dropped {point['drops']}, back {point['back']}, refusals {pool.refusals()}")
            sampling.wait(max(0.0, 1.0 - (time.monotonic() - tick)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Join: everyone subscribed, or no progress for 30 s.
    last, last_change = -1, time.monotonic()
    while pool.total("joined") < args.clients and time.monotonic() - last_change < 30:
        joined = pool.total("joined")
        if joined != last:
            last, last_change = joined, time.monotonic()
        time.sleep(0.5)
    joined = pool.total("joined")
    join_s = time.monotonic() - started
    log(f"{joined} of {args.clients} subscribed in {join_s:.1f}s")

    orders = Orders(f"http://127.0.0.1:{site.listen_port}", restaurants)
    orders.start()
    time.sleep(STEADY_S)
    health = [gateways.health(i) for i in range(2)]
    counts = [h.get("connections", 0) if h else 0 for h in health]
    victim = counts.index(max(counts))
    leader = [bool(h and h.get("relay_leader")) for h in health]
    victim_pid = gateways.procs[victim].pid
    survivor_pid = gateways.procs[1 - victim].pid
    pg_before, redis_before = pg_counts(stack.database_url), redis_counts(stack.redis_url)
    cpu_before = {"survivor": proc_cpu_s(survivor_pid), "victim": proc_cpu_s(victim_pid),
                  "nginx": _cpu(_nginx_pids(ngx.pid)), "clients": _cpu(pool.pids), "api": proc_cpu_s(api.pid),
                  "postgres_redis": _cpu(_tree_pids(list(stack.pids.values()))), "machine": _machine_busy_s()}
    drops_before = pool.total("drops")
    supervisor = threading.Thread(target=gateways.supervise, args=(victim, sampling), daemon=True)
    supervisor.start()
    fault_at = time.monotonic()
    log(f"{args.mode}: gw-{victim} (pid {victim_pid}) holding {counts[victim]} connections; other holds "
        f"{counts[1 - victim]}")
    os.kill(victim_pid, signal.SIGKILL if args.mode == "kill" else signal.SIGTERM)
    # The storm: until every dropped client is subscribed again (and the victim is back), or the limit.
    while time.monotonic() - fault_at < args.storm_s:
        time.sleep(0.5)
        settled = pool.total("subscribed") >= joined and victim in gateways.restarted_at
        if settled and time.monotonic() - fault_at > 3:
            break
    storm_s = time.monotonic() - fault_at
    time.sleep(SETTLE_S)
    window_s = time.monotonic() - fault_at
    pg_after, redis_after = pg_counts(stack.database_url), redis_counts(stack.redis_url)
    restarted_pid = gateways.procs[victim].pid
    cpu_after = {"survivor": proc_cpu_s(survivor_pid), "victim": proc_cpu_s(restarted_pid),
                 "nginx": _cpu(_nginx_pids(ngx.pid)), "clients": _cpu(pool.pids), "api": proc_cpu_s(api.pid),
                 "postgres_redis": _cpu(_tree_pids(list(stack.pids.values()))), "machine": _machine_busy_s()}
    orders.stop()
    # The last orders' events, and replays still being sent, reach everyone: wait for quiet.
    quiet_since, frames, deadline = time.monotonic(), pool.total("frames"), time.monotonic() + 60
    while time.monotonic() - quiet_since < 3.0 and time.monotonic() < deadline:
        time.sleep(0.5)
        if pool.total("frames") != frames:
            quiet_since, frames = time.monotonic(), pool.total("frames")
    sampling.set()
    sampler.join(timeout=5)
    expected = expected_ids(stack.database_url, channels)
    dropped = pool.total("drops") - drops_before
    finals = pool.finish(expected)
    accounting: dict[str, int] = {}
    recoveries: list[float] = []
    holes: list[dict[str, Any]] = []
    refusals: dict[str, int] = {}
    for body in finals:
        for key, value in body["accounting"].items():
            accounting[key] = accounting.get(key, 0) + value
        recoveries += body["recoveries"]
        holes += body.get("holes", [])
        for kind, count in body["refusals"].items():
            refusals[kind] = refusals.get(kind, 0) + count
    own = nginx_refusals(nginx_prefix)
    ngx.stop(sig=signal.SIGTERM, timeout_s=10)
    for proc in gateways.procs:
        stop(proc, timeout_s=10)
    stop(api, timeout_s=10)
    pg = delta(pg_after, pg_before)
    redis_delta = delta(redis_after, redis_before)
    top_redis = dict(sorted(redis_delta.items(), key=lambda item: -item[1])[:10])
    survivor_cpu_s = cpu_after["survivor"] - cpu_before["survivor"]
    result = {
        "mode": args.mode, "clients_asked": args.clients, "joined": joined, "join_s": round(join_s, 1),
        "victim": f"gw-{victim}", "victim_connections": counts[victim], "other_connections": counts[1 - victim],
        # The relay runs in one gateway: killing that one also moves the relay (lease takeover).
        "victim_was_relay_leader": leader[victim],
        "dropped_clients": dropped,
        "back": {"count": len(recoveries), **_seconds(recoveries)},
        "never_back": accounting.get("never_back", 0),
        "storm_s": round(storm_s, 1), "measured_window_s": round(window_s, 1),
        "victim_answering_after_s": round(gateways.restarted_at[victim] - fault_at, 1)
        if victim in gateways.restarted_at else None,
        "refusals": refusals, "nginx": own,
        "events": {"orders_sent": orders.sent, "order_statuses": orders.statuses,
                   "events_per_channel": {ch.split(":")[1][:8]: len(ids) for ch, ids in expected.items()},
                   **accounting, "holes_sample": holes[:10]},
        "postgres_during_storm": {**pg, "replay_selects_per_channel": round(pg.get("replay_selects", 0) / CHANNELS, 1)},
        "redis_during_storm": {"commands": sum(redis_delta.values()), "top": top_redis},
        "cpu_during_storm": {
            "window_s": round(window_s, 1),
            "survivor_gateway_percent": round(100 * survivor_cpu_s / window_s, 1),
            "restarted_gateway_cpu_s": round(cpu_after["victim"], 1),
            "nginx_percent": round(100 * (cpu_after["nginx"] - cpu_before["nginx"]) / window_s, 1),
            # Where the machine's two cores went: the clients share them with the fleet, and so does
            # anything else running (the machine's total includes it).
            "core_seconds": {
                "survivor_gateway": round(survivor_cpu_s, 1), "restarted_gateway": round(cpu_after["victim"], 1),
                **{part: round(cpu_after[part] - cpu_before[part], 1)
                   for part in ("nginx", "clients", "api", "postgres_redis", "machine")},
                "available": round(window_s * (os.cpu_count() or 1), 1),
            },
        },
        "nginx_site": {"worker_processes": site.worker_processes, "worker_connections": site.worker_connections,
                       "worker_rlimit_nofile": site.worker_rlimit_nofile},
        "timeline": timeline,
        "fault_at_s": round(fault_at - started, 2),
    }
    return result


def _nginx_pids(master: int) -> list[int]:
    import psutil

    try:
        return [master, *(child.pid for child in psutil.Process(master).children())]
    except psutil.Error:
        return [master]


def _tree_pids(roots: list[int]) -> list[int]:
    """The processes and their children (PostgreSQL's backends)."""
    import psutil

    pids: list[int] = []
    for root in roots:
        try:
            pids += [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
        except psutil.Error:
            continue
    return pids


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def expected_ids(database_url: str, channels: list[str]) -> dict[str, list[int]]:
    from common.db import connect

    with connect(database_url) as conn:
        return {channel: [int(row["id"]) for row in conn.execute(
            "SELECT id FROM events WHERE channels @> ARRAY[%s]::text[] ORDER BY id", (channel,))]
            for channel in channels}


def handshakes(args: argparse.Namespace, stack: Stack, work: Path) -> dict[str, Any]:
    """Connections as fast as the clients can open them, straight to one gateway (no nginx)."""
    port = embedded.stable_free_port()
    gateway = python_module("gateway", env=stack.env(GATEWAY_PORT=str(port), GATEWAY_ID="gw-hs"),
                            log=work / "gateway.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc=gateway)
    cpu_before, started = proc_cpu_s(gateway.pid), time.monotonic()
    pool = Pool(args.clients, host="127.0.0.1", port=port, mode="handshake", channels=["-"],
                concurrency=args.concurrency)
    per_second: list[tuple[float, int]] = []
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < 10:
        count = pool.total("handshakes")
        per_second.append((round(time.monotonic() - started, 1), count))
        log(f"[handshakes] {count}/{args.clients} upgraded, refusals {pool.refusals()}")
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if count >= args.clients:
            break
        time.sleep(1.0)
    elapsed = max(time.monotonic() - started, 1e-6)
    cpu_s = proc_cpu_s(gateway.pid) - cpu_before
    count = pool.total("handshakes")
    refusals = pool.refusals()
    pool.send("stop")
    for proc in pool.procs:
        stop(proc, timeout_s=10)
    stop(gateway, timeout_s=10)
    rates = [(b[1] - a[1]) / max(b[0] - a[0], 1e-6) for a, b in itertools.pairwise(per_second)]
    # From the last sample before the first upgrade (client processes start and mint tokens first)
    # to the sample that saw the last one.
    first = max((i for i, (_, n) in enumerate(per_second) if n == 0), default=0)
    last = next((i for i, (_, n) in enumerate(per_second) if n == count), len(per_second) - 1)
    span = max(per_second[last][0] - per_second[first][0], 1e-6) if per_second else elapsed
    return {"mode": "handshakes", "clients_asked": args.clients, "upgraded": count, "seconds": round(span, 1),
            "handshakes_per_s": round(count / span, 1), "peak_1s_per_s": round(max(rates, default=0.0), 1),
            "gateway_cpu_s": round(cpu_s, 2), "gateway_cpu_percent": round(100 * cpu_s / elapsed, 1),
            "gateway_cpu_ms_per_handshake": round(1000 * cpu_s / max(count, 1), 3), "refusals": refusals,
            "timeline": per_second}


def chart(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    offset = result["fault_at_s"]
    series: dict[str, list[tuple[float, float]]] = {"gw-0": [], "gw-1": [], "subscribed clients": []}
    for point in result["timeline"]:
        t = round(point["t"] - offset, 2)
        for index in range(2):
            if point["gateways"][index] is not None:
                series[f"gw-{index}"].append((t, point["gateways"][index]))
        series["subscribed clients"].append((t, point["subscribed"]))
    title = f"{result['mode']} of the busiest gateway: {result['clients_asked']} subscribers"
    return [("", {"title": title, "x_label": "seconds from the fault", "y_label": "connections",
                  "series": series})]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000, help="subscribers (default 20,000)")
    parser.add_argument("--mode", choices=("kill", "drain", "handshakes"), default="kill")
    parser.add_argument("--storm-s", type=float, default=90.0, help="longest wait for everyone to be back")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="handshakes in flight per client process (default 200)")
    args = parser.parse_args(argv)
    install_cleanup()
    raise_nofile()
    info = machine()
    log(f"machine: {info}")
    stack = Stack.start(seed=True)
    work = stack.tmp / "storm"
    work.mkdir()
    try:
        result = handshakes(args, stack, work) if args.mode == "handshakes" else storm(args, stack, work)
    finally:
        stack.stop()
    body = {"benchmark": "storm", "machine": info, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "result": result}
    charts = chart(result) if args.mode != "handshakes" else []
    for path in write_report(f"storm-{args.mode}-{args.clients}", body, charts):
        log(f"wrote {path}")
    summary = {k: v for k, v in result.items() if k not in ("timeline",)}
    print(json.dumps(summary, indent=2, default=str))
    if args.mode == "handshakes":
        return 0
    events = result["events"]
    return 1 if events.get("missing", 0) or events.get("duplicated", 0) else 0


if __name__ == "__main__":
    raise SystemExit(main())
