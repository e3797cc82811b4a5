"""Compression benchmark: bytes on the wire and gateway CPU per delivery, plain frames against permessage-deflate.

One gateway (its relay idle: nothing is written to PostgreSQL), N WebSocket clients on one
channel. Order events are published straight into Redis in the outbox format, so what the gateway
spends is the hub's decode, the fan-out, the compression and the sockets, nothing of PostgreSQL's.
Four phases in one run, each with fresh clients on the same gateway: single events and `batch`
frames of ten (`batch_ms`, bursts of ten), each with clients that offer no compression and with
clients that offer permessage-deflate. Bytes are counted as the clients' sockets read them (frame
headers included); CPU is the gateway process's user + system time from the first publish to the
last delivery.

    python -m bench.compression [--quick] [--clients N] [--events N]

The report and its chart go to bench/reports/ and, named `compression`, to docs/perf/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis

from bench.common import (
    BENCH_SECRET,
    ROOT,
    Stack,
    install_cleanup,
    log,
    machine,
    proc_cpu_s,
    python_module,
    stop,
    wait_http,
    write_report,
)
from common import outbox
from common.auth import mint_token
from common.events import REDIS_PREFIX, Event
from common.orders import order_event_data
from devstack import embedded
from dms_client.ws import Connection, ConnectionClosed

BURST = 10  # events per batch frame
BATCH_MS = 50
BURST_GAP_S = 0.15  # longer than BATCH_MS: each window holds exactly one burst


@dataclass
class Listener:
    """One client on its own thread: counts events and the bytes its socket read."""

    conn: Connection
    events: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                text = self.conn.recv()
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                return
            # A batch holds events; a single event frame starts with its type (common.wire's order).
            self.events += text.count('{"type":"event"')


def order_frame(channel: str, event_id: int) -> str:
    """A realistic `order.status_changed` frame (the API's own data builder, fresh ids each time)."""
    order = {"id": uuid.uuid4(), "restaurant_id": uuid.uuid4(), "status": "preparing", "driver_id": uuid.uuid4(),
             "version": 3, "total_amount": Decimal("84.50"), "updated_at": datetime.now(UTC)}
    data = order_event_data(order, request_id=uuid.uuid4().hex, previous_status="confirmed")
    return Event(event_id, (channel,), "order.status_changed", data,
                 datetime.now(UTC).isoformat().replace("+00:00", "Z")).frame(channel)


def connect(url: str, token: str, channel: str, *, compress: bool, batch_ms: int) -> Listener:
    query = f"?token={token}" + (f"&batch_ms={batch_ms}" if batch_ms else "")
    conn = Connection.open(url + query, timeout_s=30, wake_s=0.5, compress=compress)
    assert (conn.inflater is not None) == compress, "the gateway did not answer the offer as expected"
    conn.send(json.dumps({"type": "subscribe", "channel": channel, "ref": "s"}).encode())
    deadline, seen = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        try:
            seen = conn.recv()
        except TimeoutError:
            continue
        if '"subscribed"' in seen:
            return Listener(conn)
    raise RuntimeError(f"no subscribed reply within 30 s; last frame: {seen[:300]}")


def phase(*, url: str, gateway_pid: int, publisher: redis.Redis, clients: int, events: int, compress: bool,
          batch: bool, first_id: int) -> dict[str, Any]:
    channel = f"restaurant:{uuid.uuid4()}"
    token = mint_token(BENCH_SECRET, role="admin", ttl_s=3600)
    listeners = [connect(url, token, channel, compress=compress, batch_ms=BATCH_MS if batch else 0)
                 for _ in range(clients)]
    threads = [threading.Thread(target=listener.run, daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    frames = [order_frame(channel, first_id + n) for n in range(events)]
    wire_before = sum(listener.conn.wire_bytes for listener in listeners)
    cpu_before, started = proc_cpu_s(gateway_pid), time.monotonic()
    if batch:
        for start in range(0, events, BURST):
            pipe = publisher.pipeline(transaction=False)
            for n in range(start, min(start + BURST, events)):
                pipe.publish(REDIS_PREFIX + channel, outbox.encode(first_id + n, frames[n]))
            pipe.execute()
            time.sleep(BURST_GAP_S)
    else:
        gap_s = 1.0 / 300  # 300 events a second
        for n, frame in enumerate(frames):
            publisher.publish(REDIS_PREFIX + channel, outbox.encode(first_id + n, frame))
            time.sleep(max(0.0, started + (n + 1) * gap_s - time.monotonic()))
    expected = events * clients
    deadline = time.monotonic() + 120
    while sum(listener.events for listener in listeners) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    cpu_s, wall_s = proc_cpu_s(gateway_pid) - cpu_before, time.monotonic() - started
    delivered = sum(listener.events for listener in listeners)
    wire = sum(listener.conn.wire_bytes for listener in listeners) - wire_before
    for listener in listeners:
        listener.stop.set()
        listener.conn.close()
    for thread in threads:
        thread.join(timeout=5)
    return {
        "mode": "deflate" if compress else "plain", "frames": f"batch of {BURST}" if batch else "single",
        "clients": clients, "events": events, "delivered": delivered, "expected": expected,
        "event_bytes": len(frames[0].encode()),
        "wire_bytes_per_delivery": round(wire / max(delivered, 1), 1),
        "gateway_cpu_us_per_delivery": round(1e6 * cpu_s / max(delivered, 1), 2),
        "gateway_cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 2),
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    def pick(frames: str, mode: str) -> dict[str, Any]:
        return next(r for r in results if r["frames"] == frames and r["mode"] == mode)

    out = {}
    # CPU is counted in clock ticks (10 ms): a run too short to register any is a run too short to quote.
    for frames in ("single", f"batch of {BURST}"):
        plain, deflate = pick(frames, "plain"), pick(frames, "deflate")
        out[frames] = {
            "bytes_ratio": round(plain["wire_bytes_per_delivery"] / deflate["wire_bytes_per_delivery"], 2),
            "cpu_ratio": round(deflate["gateway_cpu_us_per_delivery"] / plain["gateway_cpu_us_per_delivery"], 2),
        }
    return out


def charts(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    def series(key: str) -> dict[str, list[tuple[float, float]]]:
        return {mode: [(1.0 if r["frames"] == "single" else float(BURST), float(r[key]))
                       for r in results if r["mode"] == mode] for mode in ("plain", "deflate")}

    return [("-bytes", {"title": "BYTES ON THE WIRE PER DELIVERED EVENT", "x_label": "EVENTS PER FRAME",
                        "y_label": "BYTES", "series": series("wire_bytes_per_delivery")}),
            ("-cpu", {"title": "GATEWAY CPU PER DELIVERED EVENT", "x_label": "EVENTS PER FRAME",
                      "y_label": "MICROSECONDS", "series": series("gateway_cpu_us_per_delivery")})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 clients, 500 events a phase")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--events", type=int)
    args = parser.parse_args()
    clients = args.clients or (100 if args.quick else 200)
    events = args.events or (500 if args.quick else 1500)
    install_cleanup()
    log("starting PostgreSQL and Redis")
    stack = Stack.start(seed=False)
    port = embedded.free_port()
    gateway = python_module("gateway", env=stack.env(GATEWAY_PORT=str(port), RELAY_IN_GATEWAY="true",
                                                     GATEWAY_ID="bench-compression", WS_COMPRESSION="on"),
                            log=stack.tmp / "gateway.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc=gateway)
    publisher = redis.Redis.from_url(stack.redis_url)
    url = f"ws://127.0.0.1:{port}/ws"
    results = []
    try:
        for batch in (False, True):
            for compress in (False, True):
                result = phase(url=url, gateway_pid=gateway.pid, publisher=publisher, clients=clients,
                               events=events, compress=compress, batch=batch, first_id=1 + len(results) * events)
                log(json.dumps(result))
                results.append(result)
    finally:
        publisher.close()
        stop(gateway)
        stack.stop()
    body = {"benchmark": "compression", "machine": machine(), "clients": clients, "events_per_phase": events,
            "results": results, "summary": summary(results)}
    log(json.dumps(body["summary"]))
    paths = write_report("compression", body, charts(results))
    name = "compression-quick" if args.quick else "compression"
    perf = ROOT / "docs" / "perf"
    shutil.copyfile(paths[0], perf / f"{name}.json")
    for path in paths[1:]:
        if path.suffix == ".png":  # compression-<stamp>-bytes.png -> docs/perf/compression-bytes.png
            shutil.copyfile(path, perf / f"{name}-{path.stem.rsplit('-', 1)[-1]}.png")
    for path in paths:
        log(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
