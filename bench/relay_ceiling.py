"""Relay ceiling: how many outbox events/s one relay carries from PostgreSQL to Redis, and where it stops.

`python -m bench.relay --mode ceiling` (or `make bench-relay BENCH_ARGS="--mode ceiling"`) starts an
embedded PostgreSQL and Redis and `python -m relay` alone, all on 127.0.0.1, then runs four phases:

1. anchor: the same frames PUBLISHed by plain redis-py, pipelined 500 events at a time, from one
   process with no PostgreSQL at all: the Redis leg written the usual way, in the same run. The
   relay's CPU per event against the anchor's says what its whole path (read, settle, encode,
   publish) costs next to publishing alone.
2. flat out: writers commit outbox rows as fast as PostgreSQL takes them (multi-row transactions
   on several sessions) while the relay runs; events/s committed against events/s published.
3. drain: the relay stopped, a backlog committed, the relay started; the rate it empties the
   backlog at, with PostgreSQL idle, is its own ceiling. py-spy samples it here (`--profile`).
4. paced: writers at fixed rates (default a quarter and half the drain rate), 25 rows a
   transaction; commit-to-publish latency per event.

Every event goes to three channels, like an order event (`orders`, `restaurant:R`, `order:O`); its
frame on `orders` is about 370 bytes, the size of an order.status_changed. One raw-socket
subscriber of `orders` timestamps what Redis delivers (chunk by chunk, parsed after the run, so it
costs almost nothing while measuring); an event's commit time is `pg_xact_commit_timestamp` of its
row. Latency is therefore commit -> NOTIFY -> relay read -> PUBLISH -> Redis -> subscriber socket,
one machine, one clock.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench.common import (
    REPORTS,
    Histogram,
    Stack,
    log,
    machine,
    python_module,
    stop,
    wait_http,
    write_report,
)
from bench.relay_probes import CHANNELS_PER_EVENT, EVENT_DATA, Cpu, Profile, RawSubscriber, Writers
from common.events import REDIS_PREFIX

SUBSCRIBED_CHANNEL = "orders"


# -- PostgreSQL and processes -------------------------------------------------------------------
def commit_times(database_url: str, first_id: int, last_id: int) -> dict[int, float]:
    """Event id -> commit time (epoch seconds) of the transaction that wrote it."""
    from common.db import connect

    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS at FROM events"
            " WHERE id BETWEEN %s AND %s", (first_id, last_id)).fetchall()
    return {int(r["id"]): float(r["at"]) for r in rows if r["at"] is not None}


def max_event_id(database_url: str) -> int:
    from common.db import connect

    with connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) AS last FROM events").fetchone()
    return int(row["last"]) if row else 0


def start_relay(stack: Stack) -> tuple[subprocess.Popen[bytes], int]:
    from devstack.embedded import free_port

    port = free_port()
    proc = python_module("relay", env=stack.env(RELAY_PORT=str(port)), log=stack.tmp / "relay.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, port


def relay_last_id(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return int(json.loads(response.read())["last_id"])


def wait_published(port: int, last_id: int, *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if relay_last_id(port) >= last_id:
            return True
        time.sleep(0.05)
    return False


# -- phases --------------------------------------------------------------------------------------
def anchor(redis_url: str, seconds: float) -> dict[str, Any]:
    """Child process: plain redis-py pipelined PUBLISH of the relay's frames, as fast as it goes."""
    import redis

    from common import outbox
    from common.events import REDIS_PREFIX, Event

    client = redis.Redis.from_url(redis_url)
    batch, events, next_id = 500, 0, 10**9  # ids far from the relay's: the subscriber ignores none
    ts = "2026-12-06T23:00:00.000000+00:00"
    started = time.monotonic()
    cpu_started = time.process_time()
    while time.monotonic() - started < seconds:
        pipe = client.pipeline(transaction=False)
        for n in range(batch):
            event = Event(next_id + n, ("orders", f"restaurant:{n % 50}", f"order:{next_id + n}"),
                          "order.status_changed", EVENT_DATA, ts)
            for channel in event.channels:
                pipe.publish(REDIS_PREFIX + channel, outbox.encode(event.id, event.frame(channel)))
        pipe.execute()
        next_id += batch
        events += batch
    wall = time.monotonic() - started
    return {"events": events, "seconds": round(wall, 3), "cpu_s": round(time.process_time() - cpu_started, 3)}


def run_anchor(stack: Stack, seconds: float, subscriber: RawSubscriber, redis_pid: int) -> dict[str, Any]:
    cpu = Cpu({"redis": redis_pid})
    proc = python_module("bench.relay_ceiling", "anchor", stack.redis_url, str(seconds), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=seconds + 60)
    result = json.loads(out.decode().strip().splitlines()[-1])
    used = cpu.seconds()
    time.sleep(0.5)
    received = len(subscriber.take())
    messages = result["events"] * CHANNELS_PER_EVENT
    return {
        "what": "redis-py pipelined PUBLISH of the same frames, 500 events per pipeline, one process, no PostgreSQL",
        "events_per_s": round(result["events"] / result["seconds"], 1),
        "messages_per_s": round(messages / result["seconds"], 1),
        "client_cpu_us_per_event": round(1e6 * result["cpu_s"] / result["events"], 1),
        "redis_cpu_us_per_message": round(1e6 * used["redis"] / messages, 2),
        "redis_cpu_percent": round(100 * used["redis"] / result["seconds"], 1),
        "subscriber_received": received, "events": result["events"],
    }


def latencies(database_url: str, arrivals: dict[int, float], first_id: int, last_id: int) -> dict[str, Any]:
    commits = commit_times(database_url, first_id, last_id)
    hist, missing = Histogram(), 0
    for event_id, committed in commits.items():
        arrived = arrivals.get(event_id)
        if arrived is None:
            missing += 1
            continue
        hist.add(max(arrived - committed, 0.0) * 1000)
    return {"commit_to_publish": hist.summary(), "missing": missing}


def in_order(arrivals: dict[int, float]) -> bool:
    """Arrival order (chunk times, ties allowed) never puts a larger id before a smaller one."""
    ids = sorted(arrivals)
    return all(arrivals[a] <= arrivals[b] for a, b in itertools.pairwise(ids))


@dataclass
class Run:
    """What every phase shares: the servers, the subscriber, and how long and how hard to write."""

    stack: Stack
    subscriber: RawSubscriber
    seconds: float
    sessions: int
    label: str
    profile: bool

    @property
    def pids(self) -> dict[str, int]:
        return {"redis": self.stack.pids["redis"], "postgres": self.stack.pids["postgres"]}

    def spy(self, phase: str) -> Profile:
        REPORTS.mkdir(parents=True, exist_ok=True)
        return Profile(REPORTS / f"relay-ceiling-{self.label or 'run'}-{phase}-profile.collapsed")


def flat_out(run: Run, relay: subprocess.Popen[bytes], relay_port: int, rows_per_commit: int,
             out: dict[str, Any]) -> dict[str, Any]:
    """Writers commit as fast as PostgreSQL takes them while the relay runs."""
    database_url = run.stack.database_url
    writers = Writers(database_url, run.sessions, rows_per_commit)
    first = max_event_id(database_url) + 1
    cpu = Cpu({"relay": relay.pid, **run.pids})
    published_before = relay_last_id(relay_port)
    spy = run.spy("flat-out")
    if run.profile:
        spy.start(relay.pid, run.seconds - 1, idle=True)
    wall = writers.run(seconds=run.seconds)
    published_in_window = relay_last_id(relay_port) - published_before
    used = cpu.seconds()
    last = max_event_id(database_url)
    wait_published(relay_port, last, timeout_s=120)
    arrivals = run.subscriber.take()
    result = {"seconds": round(wall, 2), "committed": writers.committed,
              "committed_per_s": round(writers.committed / wall, 1),
              "published_per_s": round(published_in_window / wall, 1),
              "backlog_at_end": last - (published_before + published_in_window),
              "cpu_s": used, "cpu_percent": {k: round(100 * v / wall, 1) for k, v in used.items()},
              "postgres_cpu_us_per_event": round(1e6 * used["postgres"] / max(1, writers.committed), 1),
              **latencies(database_url, arrivals, first, last), "in_order": in_order(arrivals)}
    if run.profile:
        out["flat_out_profile"] = spy.finish()
    c = result["commit_to_publish"]
    log(f"flat out: committed {result['committed_per_s']}/s, relay published {result['published_per_s']}/s,"
        f" backlog {result['backlog_at_end']}, commit-to-publish p50/p99 {c['p50_ms']}/{c['p99_ms']} ms,"
        f" cpu {result['cpu_percent']}")
    return result


def drain(run: Run, backlog: int, rows_per_commit: int, out: dict[str, Any]
          ) -> tuple[dict[str, Any], subprocess.Popen[bytes], int]:
    """With no relay running, commit `backlog` events; start one and time it to the last publish."""
    database_url = run.stack.database_url
    first = max_event_id(database_url) + 1
    fill_s = Writers(database_url, run.sessions, rows_per_commit).run(events=backlog)
    last = max_event_id(database_url)
    events = last - first + 1
    log(f"backlog of {events} events committed in {fill_s:.1f}s")
    run.subscriber.take()
    redis_admin = redis.Redis.from_url(run.stack.redis_url)
    redis_admin.config_resetstat()
    relay, relay_port = start_relay(run.stack)
    cpu = Cpu({"relay": relay.pid, **run.pids})
    spy = run.spy("drain")
    if run.profile:
        spy.start(relay.pid, run.seconds / 2, idle=True)  # inside the drain even at twice the rates seen
    started = time.monotonic()
    drained = wait_published(relay_port, last, timeout_s=300)
    wall = time.monotonic() - started
    used = cpu.seconds()
    arrivals = run.subscriber.take()
    got = [arrivals[i] for i in range(first, last + 1) if i in arrivals]
    span = (max(got) - min(got)) if len(got) > 1 else wall  # first to last publish, not the relay's start
    result = {"events": events, "drained": drained, "received": len(got), "seconds": round(span, 2),
              "events_per_s": round(events / span, 1),
              "messages_per_s": round(CHANNELS_PER_EVENT * events / span, 1),
              "relay_cpu_us_per_event": round(1e6 * used["relay"] / events, 1),
              "redis_cpu_us_per_message": round(1e6 * used["redis"] / (CHANNELS_PER_EVENT * events), 2),
              "postgres_cpu_us_per_event": round(1e6 * used["postgres"] / events, 1),
              "cpu_percent": {k: round(100 * v / wall, 1) for k, v in used.items()},
              "in_order": in_order(arrivals), "fill_events_per_s": round(events / fill_s, 1),
              # Redis's own account of where its time went (per command: calls, microseconds).
              "redis_commandstats": {name.removeprefix("cmdstat_"): {"calls": stat["calls"], "usec": stat["usec"]}
                                     for name, stat in redis_admin.info("commandstats").items()}}
    if run.profile:
        out["drain_profile"] = spy.finish()
    log(f"drain: {result['events_per_s']} events/s ({result['messages_per_s']} messages/s),"
        f" relay {result['relay_cpu_us_per_event']} us CPU/event, cpu {result['cpu_percent']}")
    return result, relay, relay_port


def paced(run: Run, relay: subprocess.Popen[bytes], relay_port: int, rate: float, rows_per_commit: int
          ) -> dict[str, Any]:
    """Writers at `rate` events/s in transactions of `rows_per_commit`: commit-to-publish latency."""
    database_url = run.stack.database_url
    first = max_event_id(database_url) + 1
    writers = Writers(database_url, run.sessions, rows_per_commit)
    cpu = Cpu({"relay": relay.pid, **run.pids})
    wall = writers.run(seconds=run.seconds, rate=rate)
    used = cpu.seconds()
    last = max_event_id(database_url)
    wait_published(relay_port, last, timeout_s=120)
    time.sleep(0.3)  # the last messages from Redis to the subscriber
    arrivals = run.subscriber.take()
    result = {"offered_per_s": rate, "committed_per_s": round(writers.committed / wall, 1),
              "rows_per_commit": rows_per_commit,
              "relay_cpu_us_per_event": round(1e6 * used["relay"] / max(1, writers.committed), 1),
              "cpu_percent": {k: round(100 * v / wall, 1) for k, v in used.items()},
              **latencies(database_url, arrivals, first, last), "in_order": in_order(arrivals)}
    c = result["commit_to_publish"]
    log(f"paced {rate:g}/s: committed {result['committed_per_s']}/s, commit-to-publish p50/p99/max"
        f" {c['p50_ms']}/{c['p99_ms']}/{c['max_ms']} ms, relay {result['relay_cpu_us_per_event']} us CPU/event,"
        f" missing {result['missing']}")
    return result


def run(*, label: str, quick: bool, durable: bool, sessions: int, rows_per_commit: int, paced_rows: int,
        paced_rates: list[float] | None, profile: bool) -> int:
    """All four phases against one embedded PostgreSQL and Redis; the report goes to bench/reports/."""
    seconds = 5.0 if quick else 10.0
    backlog = 60_000 if quick else 150_000
    info = machine()
    log(f"machine: {info}")
    flag = "on" if durable else "off"
    stack = Stack.start(seed=False, pg_settings={"track_commit_timestamp": "on", "fsync": flag,
                                                 "synchronous_commit": flag, "full_page_writes": flag})
    body: dict[str, Any] = {"benchmark": "relay-ceiling", "label": label, "durable": durable, "machine": info,
                            "channels_per_event": CHANNELS_PER_EVENT, "writer_sessions": sessions,
                            "rows_per_commit": rows_per_commit}
    try:
        redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
        subscriber = RawSubscriber(redis_port, REDIS_PREFIX + SUBSCRIBED_CHANNEL)
        time.sleep(0.2)
        ctx = Run(stack, subscriber, seconds, sessions, label, profile)
        body["anchor"] = run_anchor(stack, seconds, subscriber, ctx.pids["redis"])
        a = body["anchor"]
        log(f"anchor (redis-py PUBLISH): {a['events_per_s']} events/s, {a['client_cpu_us_per_event']} us CPU/event,"
            f" redis {a['redis_cpu_us_per_message']} us/message")
        relay, relay_port = start_relay(stack)
        body["flat_out"] = flat_out(ctx, relay, relay_port, rows_per_commit, body)
        stop(relay)
        body["drain"], relay, relay_port = drain(ctx, backlog, rows_per_commit, body)
        ceiling = body["ceiling_events_per_s"] = body["drain"]["events_per_s"]
        rates = paced_rates or [round(ceiling / 4, -2), round(ceiling / 2, -2)]
        body["paced"] = [paced(ctx, relay, relay_port, rate, paced_rows) for rate in rates]
        stop(relay)
        subscriber.close()
    finally:
        stack.stop()
    body["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    phases = [body["flat_out"], body["drain"], *body["paced"]]
    ok = all(p["in_order"] and not p.get("missing") for p in phases) and body["drain"]["drained"]
    name = f"relay-ceiling-{label}" if label else "relay-ceiling"
    series = {pct: [(s["offered_per_s"], s["commit_to_publish"][f"{pct}_ms"] or 0.01) for s in body["paced"]]
              for pct in ("p50", "p99")}
    charts = [("", {"title": f"relay commit-to-publish {label}".strip(), "x_label": "events/s committed",
                    "y_label": "ms (log)", "log_y": True, "series": series})]
    for path in write_report(name, body, charts):
        log(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":  # the anchor phase runs in its own process
    if len(sys.argv) == 4 and sys.argv[1] == "anchor":
        print(json.dumps(anchor(sys.argv[2], float(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit("usage: python -m bench.relay --mode ceiling")
