"""What the relay ceiling bench measures with: outbox writers, a raw Redis subscriber, CPU meters, py-spy.

Each is cheap next to what it measures: the writers leave the work to PostgreSQL
(`INSERT ... SELECT FROM generate_series`), the subscriber keeps what it reads unparsed until the
run is over, the meters read /proc.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT, proc_cpu_s

# The data of an order.status_changed event: its frame on `orders` comes to about 370 bytes.
EVENT_DATA = {"order_id": "6f1c0a52-8a8e-4a5c-9d7e-1f0b8f3a2c11",
              "restaurant_id": "594c1df3-2f41-4c0e-8d7b-3a9e6a1c5d20", "status": "preparing",
              "previous_status": "confirmed", "driver_id": None, "version": 3,
              "total_amount": "42.50", "updated_at": "2026-12-06T23:00:00+00:00"}
# Three channels per event, like an order event: `orders`, its restaurant's, its own.
INSERT_ROWS = (
    "INSERT INTO events (channels, event, data)"
    " SELECT ARRAY['orders', 'restaurant:' || (g %% 50), 'order:' || g], 'order.status_changed', %s::jsonb"
    " FROM generate_series(1, %s) AS g"
)
CHANNELS_PER_EVENT = 3


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



class RawSubscriber:
    """One Redis connection subscribed to one channel; keeps (arrival, bytes) chunks unparsed."""

    def __init__(self, redis_port: int, channel_name: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", redis_port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        channel = channel_name.encode()
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
