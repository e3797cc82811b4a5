"""Redis CPU per pub/sub message, and per subscriber it is written to: the cost of one shard.

`python -m bench.redis_costs [--seconds 4] [--rate 10000] [--subscribers 0,1,8,32]` starts one
embedded Redis on 127.0.0.1. For each subscriber count, that many `redis-cli SUBSCRIBE` processes
(C, output discarded, so they never fall behind) hold one channel, and a child process PUBLISHes
the relay's frames (370 bytes, pipelined 500 at a time) to it at a fixed rate. Redis's CPU over
each step divided by the messages gives its cost per message; a straight line through the steps
splits that into a base cost and a cost per subscriber. A shard is one core: 1e6 / (base + n x
per-subscriber) messages/s when each reaches n subscribers. The capacity model reads the report
(docs/perf/redis-costs.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    install_cleanup,
    log,
    machine,
    proc_cpu_s,
    python_module,
    register_child,
    spawn,
    write_report,
)

CHANNEL = "dms:ch:cost"


def frame_of(n: int) -> str:
    from bench.relay_probes import EVENT_DATA
    from common import outbox
    from common.events import Event

    event = Event(n, ("orders",), "order.status_changed", EVENT_DATA, "2026-12-06T23:00:00.000000Z")
    return outbox.encode(n, event.frame("orders"))


def publish(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Child process: PUBLISH `rate` messages a second, 500 to a pipeline, for `seconds`."""
    import redis

    client = redis.Redis(port=port)
    batch, sent = 500, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        due = started + sent / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        pipe = client.pipeline(transaction=False)
        for n in range(sent, sent + batch):
            pipe.publish(CHANNEL, frame_of(n))
        pipe.execute()
        sent += batch
    return {"messages": sent, "seconds": round(time.monotonic() - started, 3)}


def step(redis_port: int, redis_pid: int, subscribers: int, rate: float, seconds: float, cli: Path) -> dict[str, Any]:
    import redis

    admin = redis.Redis(port=redis_port)
    listeners = [spawn([str(cli), "-p", str(redis_port), "SUBSCRIBE", CHANNEL]) for _ in range(subscribers)]
    deadline = time.monotonic() + 30
    while admin.pubsub_numsub(CHANNEL)[0][1] < subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu_before = proc_cpu_s(redis_pid)
    child = python_module("bench.redis_costs", "publish", str(redis_port), str(rate), str(seconds),
                          stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=seconds + 60)
    used = proc_cpu_s(redis_pid) - cpu_before
    result = json.loads(out.decode().strip().splitlines()[-1])
    still = admin.pubsub_numsub(CHANNEL)[0][1]
    for listener in listeners:
        listener.kill()
        listener.wait()
    return {"subscribers": subscribers, "subscribers_at_end": still, "messages": result["messages"],
            "messages_per_s": round(result["messages"] / result["seconds"], 1),
            "redis_cpu_s": round(used, 3), "us_per_message": round(1e6 * used / result["messages"], 3)}


def fit(steps: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares: us_per_message = base + per_subscriber * subscribers."""
    xs = [s["subscribers"] for s in steps]
    ys = [s["us_per_message"] for s in steps]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / max(
        1e-9, sum((x - mean_x) ** 2 for x in xs))
    return round(mean_y - slope * mean_x, 3), round(slope, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per step")
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages/s published in every step")
    parser.add_argument("--subscribers", default="0,1,8,32", help="comma list of subscriber counts")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    install_cleanup()
    from devstack import embedded

    info = machine()
    log(f"machine: {info}")
    server = embedded.start_redis(Path(tempfile.mkdtemp(prefix="dms-redis-costs-")), port=embedded.free_port(),
                                  persist=False)
    if server.process is not None:
        register_child(server.process)
    cli = embedded.redis_server_binary().with_name("redis-cli")
    steps = []
    try:
        for count in (int(n) for n in args.subscribers.split(",")):
            result = step(server.port, server.pid, count, args.rate, args.seconds, cli)
            steps.append(result)
            log(f"{count} subscribers: {result['us_per_message']} us Redis CPU per message"
                f" ({result['messages_per_s']} messages/s, {result['subscribers_at_end']} subscribers at the end)")
    finally:
        server.stop(sig=signal.SIGTERM)
    base, per_subscriber = fit(steps)
    body = {"benchmark": "redis-costs", "label": args.label, "machine": info, "channel": CHANNEL,
            "frame_bytes": len(frame_of(1)), "rate_per_s": args.rate, "steps": steps,
            "base_us_per_message": base, "us_per_subscriber": per_subscriber,
            "shard_messages_per_s_one_core": {str(n): round(1e6 / (base + n * per_subscriber))
                                              for n in (0, 1, 8, 32)},
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    log(f"base {base} us per message + {per_subscriber} us per subscriber")
    charts = [("", {"title": "Redis CPU per message", "x_label": "subscribers", "y_label": "us",
                    "series": {"measured": [(s["subscribers"], s["us_per_message"]) for s in steps]}})]
    name = f"redis-costs-{args.label}" if args.label else "redis-costs"
    for path in write_report(name, body, charts):
        log(f"wrote {path}")
    return 0 if all(s["subscribers_at_end"] == s["subscribers"] for s in steps) else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "publish":
        print(json.dumps(publish(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))))
        raise SystemExit(0)
    raise SystemExit(main())
