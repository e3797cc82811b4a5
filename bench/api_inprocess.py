"""The API's own CPU per request, with no HTTP server and no load generator in the way.

`python -m bench.api_inprocess [--requests N] [--rounds R] [--pg-stages]` starts embedded
PostgreSQL and Redis, builds the app in this process and calls it as a WSGI server would, with
environs prepared beforehand, for three workloads: bare Flask answering the same catalogue pages
(`bench.bare_flask`, the peer), a cached catalogue read, and order creation. Per workload it
reports this process's CPU per call (`time.process_time`) and, for orders, PostgreSQL's: the
backend's CPU per order (from /proc) beside what `pg_stat_statements` attributes to statements.
`--pg-stages` also turns on PostgreSQL's `log_parser_stats`, `log_planner_stats` and
`log_executor_stats` for the orders and sums the log's figures per stage (they inflate what they
measure: read them as shares).

On a shared machine a wrk run's throughput moves with whatever else runs; CPU per call of one
process in a loop is the steadier figure, and alternating rounds shows the spread. The report
lands in bench/reports/ (JSON and a chart of CPU per call by round).
"""

from __future__ import annotations

import argparse
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from gevent import monkey

monkey.patch_all()

from bench.common import (  # noqa: E402
    BENCH_SECRET,
    Stack,
    catalogue_page_query,
    catalogue_pages,
    install_cleanup,
    log,
    machine,
    proc_cpu_s,
    write_report,
)
from common.auth import mint_token  # noqa: E402
from devstack.seed import CATEGORIES, RESTAURANTS  # noqa: E402

_STAGE = re.compile(r"LOG:\s+(PARSER|PARSE ANALYSIS|REWRITER|PLANNER|EXECUTOR) STATISTICS.*?!\s+([\d.]+) s user, "
                    r"([\d.]+) s system", re.S)


def call(app: Any, environ: dict[str, Any]) -> str:
    status: list[str] = []

    def start_response(line: str, _headers: list[tuple[str, str]], _exc: Any = None) -> None:
        status.append(line)

    b"".join(app(environ, start_response))
    return status[0]


def cpu_per_call_ms(app: Any, environs: list[dict[str, Any]], expect: str) -> float:
    started = time.process_time()
    for environ in environs:
        status = call(app, environ)
        if not status.startswith(expect):
            raise RuntimeError(f"expected {expect}, got {status}")
    return round((time.process_time() - started) / len(environs) * 1000, 4)


def postgres_backend_pids(database_url: str) -> list[int]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND pid <> pg_backend_pid()").fetchall()
    return [row[0] for row in rows]


def statements_ms_per_order(database_url: str, orders: int) -> float:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT sum(total_exec_time + total_plan_time) FROM pg_stat_statements"
                           " WHERE toplevel").fetchone()
    return round(float(row[0] or 0) / orders, 4)


def stage_seconds(log_text: str) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for match in _STAGE.finditer(log_text):
        totals[match.group(1).lower()] += float(match.group(2)) + float(match.group(3))
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="calls per workload per round (orders: a fifth)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-stages", action="store_true", help="PostgreSQL's per-stage CPU for the orders")
    args = parser.parse_args(argv)
    install_cleanup()
    info = machine()
    stack = Stack.start(seed=True)
    import os

    import gevent
    import psycopg
    from werkzeug.test import EnvironBuilder

    os.environ.update(stack.env())
    from api.app import create_app
    from api.cache import HITS_KEY
    from api.near_cache import run_listener
    from bench.bare_flask import make_app
    from common.boot import boot

    try:
        app = create_app(boot("api"))
        svc = app.extensions["dms"]
        gevent.spawn(run_listener, svc.near_cache, svc.redis, HITS_KEY)
        token = mint_token(BENCH_SECRET, role="restaurant", restaurant_id=RESTAURANTS[0][0])
        auth = {"Authorization": f"Bearer {token}"}
        with psycopg.connect(stack.database_url) as conn:
            products = [str(row[0]) for row in conn.execute("SELECT id FROM products WHERE active LIMIT 50")]
        def get_page(query: str) -> Any:
            environ = EnvironBuilder(path="/api/products", query_string=query, headers=auth).get_environ()
            return json.loads(b"".join(app(environ, lambda *_: None)))

        bare = make_app(catalogue_pages(get_page))

        def reads(count: int, path: str) -> list[dict[str, Any]]:
            return [EnvironBuilder(path=path, query_string=catalogue_page_query(CATEGORIES[n % len(CATEGORIES)]),
                                   headers=auth).get_environ() for n in range(count)]

        def orders(count: int) -> list[dict[str, Any]]:
            return [EnvironBuilder(path="/api/orders", method="POST", content_type="application/json",
                                   headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
                                   data=json.dumps({"customer_name": "bench", "items": [
                                       {"product_id": products[n % len(products)], "quantity": 2}]})).get_environ()
                    for n in range(count)]

        for environ in reads(len(CATEGORIES), "/api/products"):  # warm: every page cached in this process
            call(app, environ)
        call(app, orders(1)[0])
        backends = postgres_backend_pids(stack.database_url)
        rounds: list[dict[str, Any]] = []
        order_count = max(1, args.requests // 5)
        for number in range(1, args.rounds + 1):
            row: dict[str, Any] = {"round": number}
            row["bare_flask_ms"] = cpu_per_call_ms(bare, reads(args.requests, "/items"), "200")
            row["catalog_cached_ms"] = cpu_per_call_ms(app, reads(args.requests, "/api/products"), "200")
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            pg_before = sum(proc_cpu_s(pid) for pid in backends)
            row["orders_api_ms"] = cpu_per_call_ms(app, orders(order_count), "201")
            row["orders_postgres_backend_ms"] = round((sum(proc_cpu_s(pid) for pid in backends) - pg_before)
                                                      / order_count * 1000, 4)
            row["orders_postgres_statements_ms"] = statements_ms_per_order(stack.database_url, order_count)
            row["cached_over_bare_flask"] = round(row["bare_flask_ms"] / row["catalog_cached_ms"], 2)
            rounds.append(row)
            log(f"round {number}: {row}")
        stages = None
        if args.pg_stages:
            stages = pg_stages(stack, app, orders(order_count), order_count)
            log(f"PostgreSQL per order by stage (ms, inflated by the measuring): {stages}")
    finally:
        stack.stop()
    body = {"benchmark": "api_inprocess", "machine": info, "requests_per_round": args.requests,
            "orders_per_round": order_count, "rounds": rounds, "postgres_stages_ms_per_order": stages}
    series = {name: [(r["round"], r[name]) for r in rounds]
              for name in ("bare_flask_ms", "catalog_cached_ms", "orders_api_ms", "orders_postgres_backend_ms")}
    chart = ("", {"title": "API CPU per call, in process", "x_label": "round", "y_label": "ms", "log_y": True,
                  "series": series})
    for path in write_report("api-inprocess", body, [chart]):
        log(f"wrote {path}")
    return 0


def pg_stages(stack: Stack, app: Any, environs: list[dict[str, Any]], count: int) -> dict[str, float]:
    import psycopg

    settings = ("log_parser_stats", "log_planner_stats", "log_executor_stats")
    log_path = next(Path(server.log_path) for server in stack.servers if server.name == "postgres")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for name in settings:
            conn.execute(f"ALTER SYSTEM SET {name} = on")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)  # the backends take the reload signal between commands
    offset = log_path.stat().st_size
    cpu_per_call_ms(app, environs, "201")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for name in settings:
            conn.execute(f"ALTER SYSTEM RESET {name}")
        conn.execute("SELECT pg_reload_conf()")
    with open(log_path, encoding="utf-8", errors="replace") as source:
        source.seek(offset)
        totals = stage_seconds(source.read())
    return {stage: round(seconds / count * 1000, 4) for stage, seconds in totals.items()}


if __name__ == "__main__":
    raise SystemExit(main())
