"""Idle connections: how many one gateway process holds and what each costs in memory.

Opens N WebSocket connections (default 10,000) from this process with `dms_client.ws`, the WebSocket
layer under DmsClient (not DmsClient itself: no reader per connection); each reads its welcome and
then stays silent (the gateway's pings are answered by the kernel buffer, not by us: keep
WS_PING_INTERVAL long). Reports the gateway's RSS before and after and KiB per connection.
`python -m bench.idle [--connections N]`.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from bench.common import BENCH_SECRET, Stack, install_cleanup, log, machine, rss_mb, write_report  # noqa: E402
from bench.fanout import start_gateway  # noqa: E402
from common.auth import mint_token  # noqa: E402
from dms_client.ws import Connection, ConnectionClosed, HandshakeRefused  # noqa: E402


def open_idle(url: str) -> Connection | None:
    """A connection that has read its welcome, or None when the gateway did not take it."""
    try:
        conn = Connection.open(url, timeout_s=30, wake_s=30)
        welcome = conn.recv_bytes()
    except (OSError, ConnectionClosed, HandshakeRefused):
        return None
    if b'"welcome"' not in welcome:
        conn.close()
        return None
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    install_cleanup()
    log(f"machine: {machine()}")
    stack = Stack.start(seed=False)
    proc, url = start_gateway(stack, None)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    ws_url = f"ws://127.0.0.1:{port}/ws?token={mint_token(BENCH_SECRET, role='admin')}"
    time.sleep(1.0)
    before = rss_mb(proc.pid)
    started = time.monotonic()
    pool = Pool(200)  # handshakes in flight at once
    connections: list[Connection | None] = pool.map(lambda _: open_idle(ws_url), range(args.connections))
    opened = [conn for conn in connections if conn is not None]
    connect_s = time.monotonic() - started
    gevent.sleep(2.0)
    after = rss_mb(proc.pid)
    per_conn_kib = (after - before) * 1024 / max(len(opened), 1)
    log(f"{len(opened)} of {args.connections} idle connections in {connect_s:.1f}s; gateway RSS "
        f"{before:.0f} -> {after:.0f} MiB, {per_conn_kib:.1f} KiB per connection")
    for conn in opened:
        conn.close()
    proc.terminate()
    write_report("idle", {"machine": machine(), "connections_asked": args.connections, "connected": len(opened),
                          "connect_s": round(connect_s, 1), "gateway_rss_mb": {"before": round(before, 1),
                                                                               "after": round(after, 1)},
                          "rss_kib_per_connection": round(per_conn_kib, 1)}, [])


if __name__ == "__main__":
    main()
