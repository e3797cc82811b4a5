"""Analytics and CSV export on seeded orders: time and peak memory, against a named peer in the same run.

`python -m bench.dispatch [--orders N]` starts embedded PostgreSQL and Redis, seeds the demo data
and N historical orders (default 100,000), starts one API process and measures:

- `GET /api/analytics/orders` for each grouping over 7, 30 and 366 days (wall time at the client),
  and the same SQL's execution time in PostgreSQL as we run it (index-only scan) and with index
  scans switched off (peer: a table scan);
- `GET /api/orders/export.csv` of every order over HTTP (wall time, bytes, the API process's peak
  RSS before and after), and in-process the streamed body's traced peak against the peer: a
  buffered export that fetches every row and builds the whole CSV before answering.

The report lands in bench/reports/dispatch-<time>.json with a chart.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import time
import tracemalloc
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    BENCH_SECRET,
    Stack,
    install_cleanup,
    log,
    machine,
    python_module,
    stop,
    wait_http,
    write_report,
)
from common.auth import mint_token
from common.db import connect
from devstack.seed import DEMO, seed_orders

SPANS_DAYS = (7, 30, 366)
REPEATS = 7


def vacuum_settled(url: str, *, timeout_s: float = 120.0) -> float:
    """VACUUM ANALYZE orders once no other session holds a snapshot, until nearly every page is all-visible.

    Right after a bulk load, autovacuum's own ANALYZE often holds a snapshot older than the last
    batches; a VACUUM then cannot mark their pages all-visible, and the planner rightly distrusts
    index-only scans. Returns the all-visible share reached."""
    deadline = time.monotonic() + timeout_s
    share = 0.0
    with connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE backend_xmin IS NOT NULL"
                                " AND pid <> pg_backend_pid() AND datname = current_database()").fetchone()
            if busy is not None and busy["n"] == 0:
                conn.execute("VACUUM ANALYZE orders")
                row = conn.execute("SELECT relallvisible::float / greatest(relpages, 1) AS share FROM pg_class"
                                   " WHERE relname = 'orders'").fetchone()
                share = float(row["share"]) if row else 0.0
                if share >= 0.99:
                    return share
            time.sleep(0.5)
    return share


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_get(url: str, token: str) -> tuple[float, int]:
    """Wall milliseconds to read the whole body, and its size; the body is dropped chunk by chunk."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 - loopback
    started = time.perf_counter()
    size = 0
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - loopback URL we built
        while chunk := response.read(65536):
            size += len(chunk)
    return (time.perf_counter() - started) * 1000, size


def sql_ms(url: str, sql: str, params: dict[str, Any], variants: dict[str, list[str]],
           *, repeats: int = 7) -> dict[str, Any]:
    """PostgreSQL's own execution time (best of `repeats`, the variants taking turns so that load from
    the rest of the machine hits both alike) for `sql` as the admin runs it, under each variant's settings."""
    best = dict.fromkeys(variants, float("inf"))
    scans: dict[str, str] = {}
    with connect(url, autocommit=True) as conn:
        for _ in range(repeats):
            for name, settings in variants.items():
                with conn.transaction():
                    conn.execute("SELECT set_config('role', 'dms_staff', true), set_config('dms.role', 'admin', true)")
                    for setting in settings:
                        conn.execute(setting)
                    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
                assert row is not None
                plan = row["QUERY PLAN"][0]
                best[name] = min(best[name], float(plan["Execution Time"]))
                scans[name] = _scan(plan["Plan"])
    return {**{f"sql_{name}_ms": round(ms, 2) for name, ms in best.items()},
            **{f"{name}_scan": scan for name, scan in scans.items()}}


def _scan(node: dict[str, Any]) -> str:
    """The plan's scan node, e.g. "Index Only Scan orders_created_analytics"."""
    if "Scan" in node["Node Type"]:
        return f"{node['Node Type']} {node.get('Index Name', '')}".strip()
    return next((_scan(child) for child in node.get("Plans", [])), "")


def analytics(base_url: str, database_url: str, admin: str) -> list[dict[str, Any]]:
    from api.routes.analytics import GROUPS, PLANNER_SETTINGS, analytics_sql

    rows = []
    end = datetime.now(UTC)
    for group_by in GROUPS:
        for days in SPANS_DAYS:
            start = end - timedelta(days=days)
            query = (f"{base_url}/api/analytics/orders?group_by={group_by}"
                     f"&from={start.isoformat().replace('+00:00', 'Z')}&to={end.isoformat().replace('+00:00', 'Z')}")
            wall = sorted(timed_get(query, admin)[0] for _ in range(REPEATS))
            params = {"start": start, "end": end, "restaurant_id": None}
            sql = analytics_sql(group_by, scoped=False)
            row = {
                "group_by": group_by, "days": days,
                "http_median_ms": round(statistics.median(wall), 2), "http_max_ms": round(wall[-1], 2),
                **sql_ms(database_url, sql, params, {
                    "ours": [PLANNER_SETTINGS],
                    "table_scan": ["SET LOCAL enable_indexscan = off", "SET LOCAL enable_indexonlyscan = off",
                                   "SET LOCAL enable_bitmapscan = off"]}),
            }
            log(f"analytics {row}")
            rows.append(row)
    return rows


def export_in_process(stack: Stack) -> dict[str, Any]:
    """Traced peak of our streamed body against a buffered export of the same rows (the peer)."""
    from api.app import create_app
    from common.config import Config

    app = create_app(Config.from_env(stack.env()))
    admin = mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin)
    out: dict[str, Any] = {}
    try:
        client = app.test_client()
        tracemalloc.start()
        started = time.perf_counter()
        response = client.get("/api/orders/export.csv", headers={"Authorization": f"Bearer {admin}"}, buffered=False)
        size = sum(len(chunk) for chunk in response.response)
        response.close()
        out["streamed"] = {"ms": round((time.perf_counter() - started) * 1000), "bytes": size,
                           "traced_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 2)}
        tracemalloc.stop()
        tracemalloc.start()
        started = time.perf_counter()
        with connect(stack.database_url) as conn:
            rows = conn.execute("SELECT id, restaurant_id, status, total_amount, customer_name, driver_id, created_at,"
                                " delivered_at FROM orders ORDER BY created_at, id").fetchall()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row in rows:
            writer.writerow(row.values())
        body = buffer.getvalue().encode()
        out["buffered_peer"] = {"ms": round((time.perf_counter() - started) * 1000), "bytes": len(body),
                                "traced_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 2)}
        tracemalloc.stop()
    finally:
        app.extensions["dms"].close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="historical orders to seed")
    args = parser.parse_args(argv)
    install_cleanup()
    info = machine()
    stack = Stack.start(seed=True)
    try:
        seed_orders(stack.database_url, args.orders, progress=False)
        log(f"all-visible share after VACUUM: {vacuum_settled(stack.database_url):.3f}")
        from devstack.embedded import free_port

        port = free_port()
        api = python_module("api", env=stack.env(API_PORT=str(port)), log=stack.tmp / "api.log")
        base_url = f"http://127.0.0.1:{port}"
        wait_http(f"{base_url}/ready", proc=api)
        admin = mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin)
        timed_get(f"{base_url}/api/analytics/orders", admin)  # first request: profile, pools warm
        rss_start = peak_rss_mb(api.pid)
        results = analytics(base_url, stack.database_url, admin)
        rss_after_analytics = peak_rss_mb(api.pid)
        export_ms, export_bytes = timed_get(f"{base_url}/api/orders/export.csv", admin)
        rss_after_export = peak_rss_mb(api.pid)
        export = {"http_ms": round(export_ms), "bytes": export_bytes, "api_peak_rss_mb_before": round(rss_start, 1),
                  "api_peak_rss_mb_after_analytics": round(rss_after_analytics, 1),
                  "api_peak_rss_mb_after_export": round(rss_after_export, 1)}
        log(f"export over HTTP: {export}")
        stop(api)
        export["in_process"] = export_in_process(stack)
        log(f"export in process: {export['in_process']}")
    finally:
        stack.stop()
    body = {"benchmark": "dispatch", "orders_seeded": args.orders, "machine": info,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "analytics": results, "export": export}
    series: dict[str, list[tuple[float, float]]] = {}
    for row in results:
        series.setdefault(f"{row['group_by']} (ours)", []).append((row["days"], row["sql_ours_ms"]))
        series.setdefault(f"{row['group_by']} (table scan)", []).append((row["days"], row["sql_table_scan_ms"]))
    charts = [("", {"title": f"Analytics SQL time on {args.orders:,} orders", "x_label": "days in range",
                    "y_label": "ms in PostgreSQL", "series": series})]
    for path in write_report("dispatch", body, charts):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
