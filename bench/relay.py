"""Relay benchmark: commit-to-client latency of REST order events, and one transaction held open.

`python -m bench.relay [--quick] [--label NAME]` starts its own embedded PostgreSQL and Redis, one
API process and one gateway process (with its relay), all on 127.0.0.1. One gevent process here
runs 64 concurrent REST writers (`POST /api/orders`, open loop at rising rates) and an admin
`DmsClient` subscribed to `orders`, so send, response and arrival times share one clock.

Commit-to-client latency is the wall-clock arrival of an event frame minus the commit time of
the transaction that wrote it (`pg_xact_commit_timestamp` of the row's xmin, with
track_commit_timestamp on; one machine, one clock). The held scenario opens a transaction that
inserts one outbox row on `orders`, keeps it open for `--hold-s` seconds while the writers go on,
then commits: it reports the latency of the other events committed during the hold and how long
after its own commit the held event arrived. The report (JSON and charts) lands in bench/reports/.
"""

from gevent import monkey

monkey.patch_all()  # first: sockets, the HTTP client and psycopg's waits must be cooperative

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH_SECRET,
    CpuMeter,
    Histogram,
    Stack,
    install_cleanup,
    log,
    machine,
    python_module,
    stop,
    wait_http,
    write_report,
)
from common.auth import mint_token  # noqa: E402
from devstack.seed import DEMO, RESTAURANTS, demo_id  # noqa: E402
from dms_client import DmsClient, Frame  # noqa: E402

CONCURRENCY = 64
HELD_EVENT = "bench.held"
SETTLE_S = 15.0  # how long to wait for the last events of a step before counting them missing


@dataclass
class Subscriber:
    """An admin DmsClient on `orders`: arrival time per order id, and the id order it saw (every event
    frame as it arrives, before the client drops one it has seen, so disorder is still counted)."""

    url: str
    token: str
    arrivals: dict[str, float] = field(default_factory=dict)  # order id -> wall-clock arrival
    by_id: dict[int, float] = field(default_factory=dict)  # event id -> wall-clock arrival
    held_id: int | None = None
    order_of: dict[int, str] = field(default_factory=dict)  # event id -> order id
    ids: list[int] = field(default_factory=list)
    out_of_order: int = 0

    def start(self) -> None:
        subscribed = Event()
        self.client = DmsClient(self.url, token=self.token, tickets=False, compression=False, timeout_s=30)
        self.client.on("frame", self._on_frame).on("subscribed", lambda *_: subscribed.set())
        self.client.on("error", lambda frame: log(f"subscriber error: {frame}"))
        self.client.subscribe("orders")
        self.reader = gevent.spawn(self.client.run)
        if not subscribed.wait(30):
            self.close()
            raise RuntimeError("the subscriber did not get `subscribed` on orders within 30 s")

    def _on_frame(self, frame: Frame) -> None:
        now = time.time()
        if frame.get("type") == "event" and frame.get("id") is not None:
            if self.ids and frame["id"] <= self.ids[-1]:
                self.out_of_order += 1
            self.ids.append(frame["id"])
            self.by_id[frame["id"]] = now
            if frame["event"] == HELD_EVENT:
                self.held_id = frame["id"]
            elif frame["event"] == "order.created":
                self.arrivals[frame["data"]["order_id"]] = now
                self.order_of[frame["id"]] = frame["data"]["order_id"]

    def close(self) -> None:
        self.client.close()
        self.reader.kill()


@dataclass
class Sent:
    started: float  # wall clock, like the arrivals and PostgreSQL's commit timestamps
    answered: float
    order_id: str | None
    status: int | str


def post_orders(client: HTTPClient, tokens: list[str], products: list[str], *, rate: float, seconds: float,
                rng: random.Random) -> list[Sent]:
    """Open loop: request n starts at n / rate whatever the server does (up to 64 in flight)."""
    sent: list[Sent] = []
    pool = Pool(CONCURRENCY * 4)

    def one(scheduled: float, body: bytes, headers: dict[str, str]) -> None:
        order_id, status = None, "error"
        try:
            response = client.request("POST", "/api/orders", body=body, headers=headers)
            payload = response.read()
            status = response.status_code
            if status == 201:
                order_id = json.loads(payload)["id"]
        except Exception as exc:  # any transport failure is one failed request here
            status = type(exc).__name__
        sent.append(Sent(scheduled, time.time(), order_id, status))

    started = time.time()
    for n in range(int(rate * seconds)):
        scheduled = started + n / rate
        delay = scheduled - time.time()
        if delay > 0:
            gevent.sleep(delay)
        items = [{"product_id": product, "quantity": rng.randint(1, 5)}
                 for product in rng.sample(products, rng.randint(1, 3))]
        headers = {"Authorization": f"Bearer {rng.choice(tokens)}", "Content-Type": "application/json",
                   "Idempotency-Key": uuid.uuid4().hex}
        pool.spawn(one, scheduled, json.dumps({"items": items, "customer_name": "bench"}).encode(), headers)
    pool.join(timeout=120)
    return sent


def commit_times(database_url: str, ids: list[int]) -> dict[int, float]:
    """Event id -> commit time (epoch seconds) of the transaction that wrote the row."""
    from common.db import connect

    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS at"
                            " FROM events WHERE id = ANY(%s)", (ids,)).fetchall()
    return {int(r["id"]): float(r["at"]) for r in rows if r["at"] is not None}


def measure(sent: list[Sent], sub: Subscriber, database_url: str, *,
            window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Latencies of the orders answered (committed inside `window`, if given) once their events are in."""
    ok = [s for s in sent if s.order_id is not None]
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and any(s.order_id not in sub.arrivals for s in ok):
        gevent.sleep(0.05)
    order_to_id = {order_id: event_id for event_id, order_id in sub.order_of.items()}
    commits = commit_times(database_url, [order_to_id[s.order_id] for s in ok if s.order_id in order_to_id])
    commit, http = Histogram(), Histogram()
    missing = orders = 0
    for s in ok:
        event_id = order_to_id.get(str(s.order_id))
        committed = commits.get(event_id) if event_id is not None else None
        if window is not None and (committed is None or not window[0] <= committed <= window[1]):
            continue
        orders += 1
        http.add((s.answered - s.started) * 1000)
        if event_id is None or committed is None:
            missing += 1
            continue
        commit.add(max(sub.by_id[event_id] - committed, 0.0) * 1000)
    return {"orders": orders, "errors": len(sent) - len(ok), "missing_events": missing,
            "commit_to_client": commit.summary(), "http": http.summary()}


def raw_commits(database_url: str, *, writers: int, seconds: float) -> dict[str, Any]:
    """The cost of the commit path alone: `writers` sessions committing one outbox row each, flat out."""
    from common.db import connect

    hist, done = Histogram(), [0]
    stop_at = time.monotonic() + seconds

    def one() -> None:
        with connect(database_url) as conn:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                conn.execute("INSERT INTO events (channels, event, data)"
                             " VALUES (ARRAY['bench:raw'], 'bench.raw', '{}')")
                conn.commit()
                hist.add((time.perf_counter() - started) * 1000)
                done[0] += 1

    started = time.monotonic()
    gevent.joinall([gevent.spawn(one) for _ in range(writers)], timeout=seconds + 60)
    return {"writers": writers, "commits_per_s": round(done[0] / (time.monotonic() - started), 1),
            "latency": hist.summary(), "histogram": hist}


COMMIT_VARIANTS = ("insert_time_ids", "commit_ids_shared_lock", "commit_ids_exclusive_lock")


def variant_databases(stack: Stack) -> dict[str, str]:
    """Three databases on the same server: the outbox before sql/0008, with it, and with it but an
    exclusive numbering lock (every event commit waits for the previous one to be visible)."""
    import shutil

    from common.db import connect
    from common.migrations import SQL_DIR, migrate
    from devstack import embedded

    port = stack.servers[0].port
    old_sql = stack.tmp / "sql-before-0008"
    old_sql.mkdir(exist_ok=True)
    for path in SQL_DIR.glob("*.sql"):
        if path.name < "0008":
            shutil.copy(path, old_sql / path.name)
    urls = {name: embedded.create_database(port, f"dms_{name}") for name in COMMIT_VARIANTS}
    migrate(urls["insert_time_ids"], old_sql)
    migrate(urls["commit_ids_shared_lock"])
    migrate(urls["commit_ids_exclusive_lock"])
    with connect(urls["commit_ids_exclusive_lock"], autocommit=True) as conn:
        row = conn.execute("SELECT pg_get_functiondef('number_events'::regproc) AS body").fetchone()
        assert row is not None and "pg_advisory_xact_lock_shared" in row["body"]
        conn.execute(row["body"].replace("pg_advisory_xact_lock_shared", "pg_advisory_xact_lock"))
    return urls


def commit_cost(stack: Stack, *, rounds: int, seconds: float) -> dict[str, Any]:
    """Outbox commits/s and commit latency of the three variants, interleaved round by round so
    the neighbours' noise falls on all of them alike; medians of the rounds."""
    urls = variant_databases(stack)
    out: dict[str, Any] = {}
    for writers in (1, 32):
        rates: dict[str, list[float]] = {name: [] for name in COMMIT_VARIANTS}
        hists = {name: Histogram() for name in COMMIT_VARIANTS}
        for _ in range(rounds):
            for name in COMMIT_VARIANTS:
                result = raw_commits(urls[name], writers=writers, seconds=seconds)
                rates[name].append(result["commits_per_s"])
                hists[name].merge(result["histogram"])
        out[str(writers)] = {name: {"commits_per_s_median": sorted(rates[name])[len(rates[name]) // 2],
                                    "commits_per_s_rounds": rates[name], "latency": hists[name].summary()}
                             for name in COMMIT_VARIANTS}
    return out


def hold(database_url: str, hold_s: float, marks: dict[str, float]) -> None:
    """A producer outside the API: plain INSERT into the outbox, then an open transaction."""
    from common.db import connect

    with connect(database_url) as conn:
        conn.execute("INSERT INTO events (channels, event, data) VALUES (ARRAY['orders'], %s, '{}')", (HELD_EVENT,))
        marks["inserted"] = time.time()
        gevent.sleep(hold_s)
        conn.commit()
        marks["committed"] = time.time()


def compare(paths: list[str], out: str) -> int:
    """One chart of commit-to-client p50/p99 from several reports (e.g. before and after)."""
    from pathlib import Path

    from bench.chart import line_chart_png, line_chart_svg

    series: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        body = json.loads(Path(path).read_text())
        for pct in ("p50", "p99"):
            series[f"{body['label'] or path} {pct}"] = [
                (s["offered_per_s"], s["commit_to_client"][f"{pct}_ms"] or 0.01) for s in body["steps"]]
    spec = {"title": "commit-to-client latency, 64 REST writers", "x_label": "orders/s offered",
            "y_label": "ms (log)", "log_y": True, "series": series}
    Path(out).write_bytes(line_chart_png(**spec))
    Path(out).with_suffix(".svg").write_text(line_chart_svg(**spec))
    log(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="+", metavar="REPORT",
                        help="draw one chart from these reports (to --out) instead of running")
    parser.add_argument("--out", default="docs/perf/relay.png", help="where --compare draws")
    parser.add_argument("--quick", action="store_true", help="two short rate steps and a 4 s hold")
    parser.add_argument("--rates", help="comma list of orders/s steps (default 25,50,100,200)")
    parser.add_argument("--step-s", type=float, help="seconds per rate step (default 10)")
    parser.add_argument("--hold-s", type=float, help="how long the held transaction stays open (default 8)")
    parser.add_argument("--hold-rate", type=float, default=50.0, help="orders/s during the hold")
    parser.add_argument("--label", default="", help="a name for this run in the report (e.g. before, after)")
    parser.add_argument("--no-commit-cost", action="store_true",
                        help="skip the interleaved outbox commit comparison (needs sql/0008)")
    parser.add_argument("--no-durable", action="store_true",
                        help="fsync and synchronous_commit off (default on, as in production)")
    parser.add_argument("--mode", choices=("latency", "ceiling"), default="latency",
                        help="latency: REST writers through API and gateway (default); ceiling: the relay alone"
                             " against outbox rows committed flat out (bench/relay_ceiling.py)")
    parser.add_argument("--sessions", type=int, default=4, help="ceiling: writer sessions")
    parser.add_argument("--rows-per-commit", type=int, default=100, help="ceiling: rows per flat-out transaction")
    parser.add_argument("--paced-rows", type=int, default=25, help="ceiling: rows per paced transaction")
    parser.add_argument("--paced-rates",
                        help="ceiling: comma list of events/s (default a quarter and half the measured ceiling)")
    parser.add_argument("--profile", action="store_true", help="ceiling: py-spy samples the relay while it drains")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.out)
    if args.mode == "ceiling":
        from bench.relay_ceiling import run

        install_cleanup()
        return run(label=args.label, quick=args.quick, durable=not args.no_durable, sessions=args.sessions,
                   rows_per_commit=args.rows_per_commit, paced_rows=args.paced_rows,
                   paced_rates=[float(r) for r in args.paced_rates.split(",")] if args.paced_rates else None,
                   profile=args.profile)
    install_cleanup()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else ([25.0, 50.0] if args.quick
                                                                          else [25.0, 50.0, 100.0, 200.0])
    step_s = args.step_s or (5.0 if args.quick else 10.0)
    hold_s = args.hold_s or (4.0 if args.quick else 8.0)
    info = machine()
    log(f"machine: {info}")
    durable = "off" if args.no_durable else "on"
    # Durable like production: the commit instant the numbering lock serialises includes the WAL flush.
    stack = Stack.start(seed=True, pg_settings={"track_commit_timestamp": "on", "fsync": durable,
                                                "synchronous_commit": durable, "full_page_writes": durable})
    steps: list[dict[str, Any]] = []
    held: dict[str, Any] = {}
    try:
        from bench.fanout import start_gateway
        from devstack.embedded import free_port

        port = free_port()
        api = python_module("api", env=stack.env(API_PORT=str(port)), log=stack.tmp / "api.log")
        wait_http(f"http://127.0.0.1:{port}/ready", proc=api)
        gateway, ws_url = start_gateway(stack, stack.tmp / "gateway.log")
        meter = CpuMeter({"api": api.pid, "gateway": gateway.pid, **stack.pids})
        tokens = [mint_token(BENCH_SECRET, role="restaurant", restaurant_id=rid) for rid, _, _ in RESTAURANTS]
        products = [demo_id(f"product:{n}") for n in range(1000) if n % 25 != 0]
        sub = Subscriber(ws_url, mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin))
        sub.start()
        client = HTTPClient("127.0.0.1", port, concurrency=CONCURRENCY, connection_timeout=10, network_timeout=60)
        rng = random.Random(18)
        post_orders(client, tokens, products, rate=20, seconds=1.0, rng=rng)  # warm the pools
        commits: dict[str, Any] = {}
        if not args.no_commit_cost:
            commits = commit_cost(stack, rounds=1 if args.quick else 3, seconds=2.0)
            for writers, by_variant in commits.items():
                log(f"outbox commits, {writers} writers: " + ", ".join(
                    f"{name} {v['commits_per_s_median']}/s p50 {v['latency']['p50_ms']} ms"
                    for name, v in by_variant.items()))
        for rate in rates:
            meter.reset()
            sent = post_orders(client, tokens, products, rate=rate, seconds=step_s, rng=rng)
            cpu = meter.percent()
            result = {"offered_per_s": rate, "achieved_per_s": round(sum(1 for s in sent if s.order_id) / step_s, 1),
                      **measure(sent, sub, stack.database_url), "cpu_percent": cpu}
            steps.append(result)
            c = result["commit_to_client"]
            log(f"{rate:g}/s: {result['achieved_per_s']}/s ok, commit-to-client p50/p99/max {c['p50_ms']}/"
                f"{c['p99_ms']}/{c['max_ms']} ms, http p99 {result['http']['p99_ms']} ms, "
                f"missing {result['missing_events']}, errors {result['errors']}, cpu {cpu}")
            if result["errors"] > 0.05 * len(sent) or (result["http"]["p50_ms"] or 0) > 5000:
                log(f"saturated at {rate:g}/s; not rising further")
                break

        # Held-open transaction: writers at a steady rate before, during and after the hold.
        marks: dict[str, float] = {}
        holder = gevent.spawn_later(2.0, hold, stack.database_url, hold_s, marks)
        sent = post_orders(client, tokens, products, rate=args.hold_rate, seconds=hold_s + 5.0, rng=rng)
        holder.join(timeout=hold_s + 30)
        window = (marks["inserted"], marks["committed"])
        during = measure(sent, sub, stack.database_url, window=window)
        deadline = time.monotonic() + SETTLE_S
        while sub.held_id is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        held_after_ms = None
        if sub.held_id is not None:
            held_commit = commit_times(stack.database_url, [sub.held_id])[sub.held_id]
            held_after_ms = round((sub.by_id[sub.held_id] - held_commit) * 1000, 1)
        held = {"hold_s": hold_s, "rate_per_s": args.hold_rate, "during_hold": during,
                "held_event_after_commit_ms": held_after_ms}
        d = during["commit_to_client"]
        log(f"held {hold_s:g}s: others during the hold p50/p99/max {d['p50_ms']}/{d['p99_ms']}/{d['max_ms']} ms"
            f" ({during['orders']} orders); held event arrived {held['held_event_after_commit_ms']} ms after"
            f" its commit")
        out_of_order = sub.out_of_order
        sub.close()
        stop(gateway)
        stop(api)
    finally:
        stack.stop()
    body = {"benchmark": "relay", "label": args.label, "concurrency": CONCURRENCY, "step_s": step_s,
            "durable": durable == "on", "commit_cost": commits,
            "machine": info, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "subscriber_out_of_order": out_of_order, "steps": steps, "held": held}
    name = f"relay-{args.label}" if args.label else "relay"
    charts = [("", {"title": f"commit-to-client latency {args.label}".strip(), "x_label": "orders/s offered",
                    "y_label": "ms (log)", "log_y": True,
                    "series": {pct: [(s["offered_per_s"], s["commit_to_client"][f"{pct}_ms"] or 0.01) for s in steps]
                               for pct in ("p50", "p99")}})]
    for path in write_report(name, body, charts):
        log(f"wrote {path}")
    return 1 if out_of_order or any(s["missing_events"] for s in steps) else 0


if __name__ == "__main__":
    raise SystemExit(main())
