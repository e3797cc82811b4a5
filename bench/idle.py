"""Idle connections: how many gateway processes hold and what each connection costs in memory.

Opens N WebSocket connections (default 10,000) with `dms_client.ws`, the WebSocket layer under
DmsClient (not DmsClient itself: no reader per connection); each reads its welcome and then stays
silent (the gateway's pings are answered by the kernel buffer, not by us: keep WS_PING_INTERVAL
long). With `--gateways G` the connections are spread round robin over G gateway processes, and
opened by client processes of at most CLIENTS_PER_PROCESS each: a process may hold 20,000
descriptors on this machine, gateways and clients alike, so 50,000 connections need three
gateways and four client processes. Reports each gateway's RSS before and after and KiB per
connection. `python -m bench.idle [--connections N] [--gateways G]`.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH_SECRET,
    Stack,
    install_cleanup,
    log,
    machine,
    python_module,
    rss_mb,
    write_report,
)
from bench.fanout import start_gateway  # noqa: E402
from common.auth import mint_token  # noqa: E402
from dms_client.ws import Connection, ConnectionClosed, HandshakeRefused  # noqa: E402


def open_idle(url: str, *, tries: int = 10) -> Connection | None:
    """A connection that has read its welcome, or None when the gateway did not take it.

    A handshake refused by admission (503) is tried again after its Retry-After, as a client would.
    """
    try:
        conn = Connection.open(url, timeout_s=30, wake_s=30)
        welcome = conn.recv_bytes()
    except HandshakeRefused as refused:
        if refused.status != 503 or tries <= 1:
            return None
        gevent.sleep(refused.retry_after_s or 1.0)
        return open_idle(url, tries=tries - 1)
    except (OSError, ConnectionClosed):
        return None
    if b'"welcome"' not in welcome:
        conn.close()
        return None
    return conn


CLIENTS_PER_PROCESS = 15_000  # under a process's 20,000 descriptors
HANDSHAKES_IN_FLIGHT = 200  # per client process


def open_many(urls: list[str], count: int) -> list[Connection]:
    """`count` idle connections, round robin over `urls`, at most HANDSHAKES_IN_FLIGHT opening at once."""
    pool = Pool(HANDSHAKES_IN_FLIGHT)
    connections = pool.map(lambda n: open_idle(urls[n % len(urls)]), range(count))
    return [conn for conn in connections if conn is not None]


def worker(urls: list[str], count: int) -> None:
    """A client process: open the connections, say how many on stdout, hold them until stdin closes."""
    opened = open_many(urls, count)
    print(f"opened {len(opened)}", flush=True)
    gevent.get_hub().threadpool.apply(sys.stdin.read)  # EOF: the benchmark is done
    for conn in opened:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes to spread over (default 1)")
    parser.add_argument("--worker", nargs=2, metavar=("URLS", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.worker:
        worker(args.worker[0].split(","), int(args.worker[1]))
        return
    install_cleanup()
    log(f"machine: {machine()}")
    stack = Stack.start(seed=False)
    token = mint_token(BENCH_SECRET, role="admin", ttl_s=3600)
    gateways = [start_gateway(stack, None) for _ in range(args.gateways)]
    urls = [f"{url}?token={token}" for _, url in gateways]
    time.sleep(1.0)
    before = [rss_mb(proc.pid) for proc, _ in gateways]
    started = time.monotonic()
    processes = max(1, math.ceil(args.connections / CLIENTS_PER_PROCESS))
    workers = []
    for index in range(processes):
        count = args.connections // processes + (1 if index < args.connections % processes else 0)
        workers.append(python_module("bench.idle", "--worker", ",".join(urls), str(count),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    opened = 0
    for proc in workers:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        opened += int(line[1]) if len(line) == 2 and line[0] == "opened" else 0
    connect_s = time.monotonic() - started
    gevent.sleep(2.0)
    after = [rss_mb(proc.pid) for proc, _ in gateways]
    per_conn_kib = (sum(after) - sum(before)) * 1024 / max(opened, 1)
    log(f"{opened} of {args.connections} idle connections over {args.gateways} gateway(s) in {connect_s:.1f}s; "
        f"gateway RSS {sum(before):.0f} -> {sum(after):.0f} MiB, {per_conn_kib:.1f} KiB per connection")
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    for proc, _ in gateways:
        proc.terminate()
    write_report("idle", {"machine": machine(), "connections_asked": args.connections, "connected": opened,
                          "gateways": args.gateways, "client_processes": processes,
                          "connect_s": round(connect_s, 1),
                          "gateway_rss_mb": {"before": [round(x, 1) for x in before],
                                             "after": [round(x, 1) for x in after]},
                          "rss_kib_per_connection": round(per_conn_kib, 1)}, [])


if __name__ == "__main__":
    main()
