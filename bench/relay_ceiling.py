"""Relay ceiling: how many outbox events/s one relay carries from PostgreSQL to Redis, and where it stops.

`python -m bench.relay --mode ceiling` (or `make bench-relay BENCH_ARGS="--mode ceiling"`) starts an
embedded PostgreSQL and Redis and `python -m relay` alone, all on 127.0.0.1, then runs four phases:

1. anchor: the same frames PUBLISHed by plain redis-py, pipelined, from one process with no
   PostgreSQL at all. The relay's Redis leg cannot beat it, so relay/anchor says how much of the
   relay's cost is its own (read, settle, encode) rather than Redis's. The Redis server's CPU per
   message here is also the per-shard cost the capacity model uses.
2. flat out: writers commit outbox rows as fast as PostgreSQL takes them (multi-row transactions
   on several sessions) while the relay runs; events/s committed against events/s published.
3. drain: the relay stopped, a backlog committed, the relay started; the rate it empties the
   backlog at, with PostgreSQL idle, is its own ceiling. py-spy samples it here (`--profile`).
4. paced: writers at a fixed rate (default half the ceiling) in small transactions;
   commit-to-publish latency per event.

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
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    REPORTS,
    ROOT,
    Histogram,
    Stack,
    log,
    machine,
    proc_cpu_s,
    python_module,
    stop,
    wait_http,
    write_report,
)

CHANNELS_PER_EVENT = 3
SUBSCRIBED_CHANNEL = "orders"
# The data of an order.status_changed event: its frame on `orders` comes to about 370 bytes.
EVENT_DATA = {"order_id": "6f1c0a52-8a8e-4a5c-9d7e-1f0b8f3a2c11",
              "restaurant_id": "594c1df3-2f41-4c0e-8d7b-3a9e6a1c5d20", "status": "preparing",
              "previous_status": "confirmed", "driver_id": None, "version": 3,
              "total_amount": "42.50", "updated_at": "2026-12-06T23:00:00+00:00"}
INSERT_ROWS = (
    "INSERT INTO events (channels, event, data)"
    " SELECT ARRAY['orders', 'restaurant:' || (g %% 50), 'order:' || g], 'order.status_changed', %s::jsonb"
    " FROM generate_series(1, %s) AS g"
)


# -- writers -------------------------------------------------------------------------------------
@dataclass
class Writers:
    """Sessions committing outbox rows: flat out, or paced to a total rate of events/s."""

    database_url: str
    sessions: int
    rows_per_commit: int
    committed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, *, seconds: float | None = None, events: int | None = None, rate: float | None = None) -> float:
        """Commit until `seconds` pass or `events` are in; return the wall time it took."""
        stop_at = time.monotonic() + seconds if seconds is not None else float("inf")
        quota = [events if events is not None else sys.maxsize]
        data = json.dumps(EVENT_DATA)
        started = time.monotonic()
        # Paced: each session commits on its own schedule, offset so the commits interleave.
        interval = self.sessions * self.rows_per_commit / rate if rate else 0.0

        def one(index: int) -> None:
            from common.db import connect

            with connect(self.database_url) as conn:
                due = started + index * interval / self.sessions
                while time.monotonic() < stop_at:
                    with self._lock:
                        rows = min(self.rows_per_commit, quota[0])
                        quota[0] -= rows
                    if rows <= 0:
                        return
                    if interval:
                        due += interval
                        delay = due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    conn.execute(INSERT_ROWS, (data, rows))
                    conn.commit()
                    with self._lock:
                        self.committed += rows

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(self.sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started


# -- the subscriber ------------------------------------------------------------------------------
class RawSubscriber:
    """One Redis connection subscribed to `dms:ch:orders`; keeps (arrival, bytes) chunks unparsed."""

    def __init__(self, redis_port: int) -> None:
        from common.events import REDIS_PREFIX

        self.sock = socket.create_connection(("127.0.0.1", redis_port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        channel = (REDIS_PREFIX + SUBSCRIBED_CHANNEL).encode()
        self.sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        self.chunks: list[tuple[float, bytes]] = []
        self._stopping = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stopping:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.chunks.append((time.time(), data))

    def take(self) -> dict[int, float]:
        """Event id -> arrival (epoch seconds) of everything received since the last take."""
        chunks, self.chunks = self.chunks, []
        return parse_arrivals(chunks)

    def close(self) -> None:
        self._stopping = True
        self.sock.close()


def parse_arrivals(chunks: list[tuple[float, bytes]]) -> dict[int, float]:
    """RESP pub/sub messages -> event id -> arrival time of the chunk that completed the message."""
    arrivals: dict[int, float] = {}
    buffer = b""
    for at, data in chunks:
        buffer += data
        position = 0
        while True:
            # *3\r\n$7\r\nmessage\r\n$N\r\n<channel>\r\n$M\r\n<id>|<frame>\r\n
            parsed = _one_message(buffer, position)
            if parsed is None:
                break
            position, payload = parsed
            if payload is not None:
                head = payload.split(b"|", 1)[0]
                if head.isdigit():
                    arrivals.setdefault(int(head), at)
        buffer = buffer[position:]
    return arrivals


def _one_message(buffer: bytes, start: int) -> tuple[int, bytes | None] | None:
    """(end, last bulk string) of one RESP array at `start`, or None when it is not complete yet."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    count = int(buffer[start + 1:line_end])
    position, last = line_end + 2, None
    for _ in range(count):
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        if buffer[position:position + 1] == b":":  # an integer (the subscribe reply's count)
            position, last = line_end + 2, None
            continue
        size = int(buffer[position + 1:line_end])
        body_end = line_end + 2 + size
        if body_end + 2 > len(buffer):
            return None
        last = buffer[line_end + 2:body_end]
        position = body_end + 2
    return position, last


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


class Cpu:
    """CPU seconds of named processes (PostgreSQL with its backends) between two reads."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.pids = pids
        self._psutil = psutil
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            total = proc_cpu_s(pid)
            if name == "postgres":
                # Backends come and go with the writers' sessions: the live ones now, plus what the
                # postmaster has reaped (its children's times), so a session that ended still counts.
                try:
                    postmaster = self._psutil.Process(pid)
                    reaped = postmaster.cpu_times()
                    total += reaped.children_user + reaped.children_system
                    total += sum(proc_cpu_s(child.pid) for child in postmaster.children(recursive=True))
                except self._psutil.Error:
                    pass
            out[name] = total
        return out

    def seconds(self) -> dict[str, float]:
        now = self._sample()
        if "postgres" in now:
            # The writers' sessions have just closed: a backend still exiting is neither among the
            # live children nor reaped yet, and its CPU would go uncounted.
            time.sleep(0.3)
            now["postgres"] = self._sample()["postgres"]
        return {name: round(now[name] - self._start[name], 3) for name in now}


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
class Profile:
    """py-spy sampling one process into a collapsed-stack file, summarised after."""

    path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, pid: int, seconds: float, *, idle: bool = False) -> None:
        # --idle keeps the samples where the relay waits (on PostgreSQL, Redis, a NOTIFY): a wall-time
        # profile, which is what says why a relay short of CPU still falls behind.
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))), "--rate", "250",
             "--format", "raw", "--output", str(self.path), "--nonblocking", *(["--idle"] if idle else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, top: int = 25) -> dict[str, Any]:
        if self.proc is None:
            return {}
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not self.path.exists():
            return {"error": "py-spy wrote nothing (not installed, or not allowed to attach)"}
        return summarise_profile(self.path, top)


RELAY_THREAD = "Relay.run"  # stacks of the loop's thread; the /health and /metrics thread idles elsewhere


def summarise_profile(path: Path, top: int) -> dict[str, Any]:
    """Self and inclusive share of the relay loop's samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue  # py-spy read a frame while the process was changing it: garbled, rare, dropped
        count = int(count_text)
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for frame in stack.split(";")]
        if not any(frame.startswith(RELAY_THREAD + " ") for frame in frames):
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_percent": ranked(own), "inclusive_percent": ranked(inclusive),
            "collapsed": str(path.relative_to(ROOT))}


def run(*, label: str, quick: bool, durable: bool, sessions: int, rows_per_commit: int, paced_rows: int,
        paced_rates: list[float] | None, profile: bool) -> int:
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
    ok = True
    try:
        redis_pid, pg_pid = stack.pids["redis"], stack.pids["postgres"]
        redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
        subscriber = RawSubscriber(redis_port)
        time.sleep(0.2)

        body["anchor"] = run_anchor(stack, seconds, subscriber, redis_pid)
        a = body["anchor"]
        log(f"anchor (redis-py PUBLISH): {a['events_per_s']} events/s, {a['client_cpu_us_per_event']} us CPU/event,"
            f" redis {a['redis_cpu_us_per_message']} us/message")

        # Flat out: writers and relay together.
        relay, relay_port = start_relay(stack)
        writers = Writers(stack.database_url, sessions, rows_per_commit)
        first = max_event_id(stack.database_url) + 1
        cpu = Cpu({"relay": relay.pid, "redis": redis_pid, "postgres": pg_pid})
        published_before = relay_last_id(relay_port)
        flat_spy = Profile(REPORTS / f"relay-ceiling-{label or 'run'}-flat-out-profile.collapsed")
        if profile:
            REPORTS.mkdir(parents=True, exist_ok=True)
            flat_spy.start(relay.pid, seconds - 1, idle=True)
        wall = writers.run(seconds=seconds)
        published_in_window = relay_last_id(relay_port) - published_before
        used = cpu.seconds()
        last = max_event_id(stack.database_url)
        wait_published(relay_port, last, timeout_s=120)
        arrivals = subscriber.take()
        flat = {"seconds": round(wall, 2), "committed": writers.committed,
                "committed_per_s": round(writers.committed / wall, 1),
                "published_per_s": round(published_in_window / wall, 1),
                "backlog_at_end": last - (published_before + published_in_window),
                "cpu_s": used, "cpu_percent": {k: round(100 * v / wall, 1) for k, v in used.items()},
                "postgres_cpu_us_per_event": round(1e6 * used["postgres"] / max(1, writers.committed), 1),
                **latencies(stack.database_url, arrivals, first, last), "in_order": in_order(arrivals)}
        body["flat_out"] = flat
        if profile:
            body["flat_out_profile"] = flat_spy.finish()
        c = flat["commit_to_publish"]
        log(f"flat out: committed {flat['committed_per_s']}/s, relay published {flat['published_per_s']}/s,"
            f" backlog {flat['backlog_at_end']}, commit-to-publish p50/p99 {c['p50_ms']}/{c['p99_ms']} ms,"
            f" cpu {flat['cpu_percent']}")

        # Drain: the relay alone against a committed backlog.
        stop(relay)
        first = max_event_id(stack.database_url) + 1
        writers = Writers(stack.database_url, sessions, rows_per_commit)
        fill_s = writers.run(events=backlog)
        last = max_event_id(stack.database_url)
        log(f"backlog of {last - first + 1} events committed in {fill_s:.1f}s")
        subscriber.take()
        redis_admin = redis.Redis.from_url(stack.redis_url)
        redis_admin.config_resetstat()
        relay, relay_port = start_relay(stack)
        cpu = Cpu({"relay": relay.pid, "redis": redis_pid, "postgres": pg_pid})
        spy = Profile(REPORTS / f"relay-ceiling-{label or 'run'}-drain-profile.collapsed")
        if profile:
            REPORTS.mkdir(parents=True, exist_ok=True)
            spy.start(relay.pid, seconds / 2, idle=True)  # inside the drain even at twice the rate measured here
        started = time.monotonic()
        drained = wait_published(relay_port, last, timeout_s=300)
        drain_wall = time.monotonic() - started
        used = cpu.seconds()
        arrivals = subscriber.take()
        got = [arrivals[i] for i in range(first, last + 1) if i in arrivals]
        events = last - first + 1
        span = (max(got) - min(got)) if len(got) > 1 else drain_wall
        drain = {"events": events, "drained": drained, "received": len(got), "seconds": round(span, 2),
                 "events_per_s": round(events / span, 1),
                 "messages_per_s": round(CHANNELS_PER_EVENT * events / span, 1),
                 "relay_cpu_us_per_event": round(1e6 * used["relay"] / events, 1),
                 "redis_cpu_us_per_message": round(1e6 * used["redis"] / (CHANNELS_PER_EVENT * events), 2),
                 "postgres_cpu_us_per_event": round(1e6 * used["postgres"] / events, 1),
                 "cpu_percent": {k: round(100 * v / drain_wall, 1) for k, v in used.items()},
                 "in_order": in_order(arrivals), "fill_events_per_s": round(events / fill_s, 1)}
        # Redis's own account of where its time went (per command: calls, microseconds).
        drain["redis_commandstats"] = {name.removeprefix("cmdstat_"): {"calls": stat["calls"], "usec": stat["usec"]}
                                       for name, stat in redis_admin.info("commandstats").items()}
        body["drain"] = drain
        if profile:
            body["drain_profile"] = spy.finish()
        log(f"drain: {drain['events_per_s']} events/s ({drain['messages_per_s']} messages/s),"
            f" relay {drain['relay_cpu_us_per_event']} us CPU/event, cpu {drain['cpu_percent']}")

        # Paced: commit-to-publish at a quarter and half the relay's ceiling (or the rates asked for).
        ceiling = drain["events_per_s"]
        body["ceiling_events_per_s"] = ceiling
        body["paced"] = []
        for rate in paced_rates or [round(ceiling / 4, -2), round(ceiling / 2, -2)]:
            first = max_event_id(stack.database_url) + 1
            writers = Writers(stack.database_url, sessions, paced_rows)
            cpu = Cpu({"relay": relay.pid, "redis": redis_pid, "postgres": pg_pid})
            wall = writers.run(seconds=seconds, rate=rate)
            used = cpu.seconds()
            last = max_event_id(stack.database_url)
            wait_published(relay_port, last, timeout_s=120)
            time.sleep(0.3)
            arrivals = subscriber.take()
            step = {"offered_per_s": rate, "committed_per_s": round(writers.committed / wall, 1),
                    "rows_per_commit": paced_rows,
                    "relay_cpu_us_per_event": round(1e6 * used["relay"] / max(1, writers.committed), 1),
                    "cpu_percent": {k: round(100 * v / wall, 1) for k, v in used.items()},
                    **latencies(stack.database_url, arrivals, first, last), "in_order": in_order(arrivals)}
            body["paced"].append(step)
            c = step["commit_to_publish"]
            log(f"paced {rate:g}/s: committed {step['committed_per_s']}/s, commit-to-publish p50/p99/max"
                f" {c['p50_ms']}/{c['p99_ms']}/{c['max_ms']} ms, relay {step['relay_cpu_us_per_event']} us CPU/event,"
                f" missing {step['missing']}")
            ok = ok and step["missing"] == 0 and step["in_order"]
        ok = ok and drain["drained"] and drain["in_order"] and flat["in_order"] and flat["missing"] == 0
        stop(relay)
        subscriber.close()
    finally:
        stack.stop()
    body["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
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
