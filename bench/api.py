"""REST API benchmark: order creation and cached vs uncached catalogue reads at rising request rates.

`python -m bench.api [--quick]` starts its own embedded PostgreSQL and Redis, seeds the demo
catalogue and 100,000 historical orders, starts one API process and drives it from a separate
load-generator process (bench.loadgen). The report lands in bench/reports/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from bench.common import (
    BENCH_SECRET,
    CpuMeter,
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
from common.seed import DEMO, RESTAURANTS, demo_id, seed_orders

P95_LIMIT_MS = 100.0
GIVE_UP_P95_MS = 1000.0
MODES = ("catalog_cached", "catalog_uncached", "orders")


def invalidate_catalogue(base_url: str, admin: str) -> None:
    """A product write moves the catalogue cache to a new generation: every list starts cold."""
    import urllib.request

    url = f"{base_url}/api/products/{demo_id('product:1')}"
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    body = json.dumps({"unit": "each"}).encode()
    request = urllib.request.Request(url, method="PATCH", data=body, headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback URL we built
        response.read()


def step(config: dict[str, Any], meter: CpuMeter, loadgen_log: Any) -> dict[str, Any]:
    proc = python_module("bench.loadgen", json.dumps(config), stdout=subprocess.PIPE, log=loadgen_log)
    meter.reset()
    out, _ = proc.communicate(timeout=config["duration_s"] + 120)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    # The generator reports its own CPU: it has exited before we could sample it.
    result["cpu_percent"] = {**meter.percent(), "loadgen": result.pop("loadgen_cpu_percent")}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 orders, two short steps per mode")
    parser.add_argument("--orders", type=int, help="historical orders to seed (default 100000)")
    args = parser.parse_args(argv)
    install_cleanup()
    rates = [50, 150] if args.quick else [50, 100, 200, 400, 800]
    duration_s = 4.0 if args.quick else 10.0
    orders = args.orders or (10_000 if args.quick else 100_000)
    info = machine()
    log(f"machine: {info}")
    stack = Stack.start(seed=True)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        started = time.monotonic()
        seed_orders(stack.database_url, orders, progress=False)
        log(f"seeded {orders} orders in {time.monotonic() - started:.1f}s")
        from common.embedded import free_port

        port = free_port()
        api = python_module("api", env=stack.env(API_PORT=str(port)), log=stack.tmp / "api.log")
        base_url = f"http://127.0.0.1:{port}"
        wait_http(f"{base_url}/ready", proc=api)
        meter = CpuMeter({"api": api.pid, **stack.pids})
        admin = mint_token(BENCH_SECRET, role="admin", sub=DEMO.admin)
        tokens = {
            "orders": [mint_token(BENCH_SECRET, role="restaurant", restaurant_id=rid) for rid, _, _ in RESTAURANTS],
            "catalog": [mint_token(BENCH_SECRET, role="restaurant", restaurant_id=rid) for rid, _, _ in RESTAURANTS],
        }
        products = [demo_id(f"product:{n}") for n in range(1000) if n % 25 != 0]
        for mode in MODES:
            for rate in rates:
                if mode == "catalog_uncached":
                    invalidate_catalogue(base_url, admin)
                config = {"base_url": base_url, "mode": mode, "rate": rate, "duration_s": duration_s,
                          "concurrency": 64, "products": products, "seed": rate,
                          "tokens": tokens["orders" if mode == "orders" else "catalog"]}
                if mode == "catalog_cached":
                    step({**config, "rate": 20, "duration_s": 1.0}, meter, stack.tmp / "loadgen.log")  # warm
                result = step(config, meter, stack.tmp / "loadgen.log")
                results[mode].append(result)
                latency = result["latency"]
                log(f"{mode} @ {rate}/s: {result['achieved_per_s']}/s ok, p50/p95/p99 {latency['p50_ms']}/"
                    f"{latency['p95_ms']}/{latency['p99_ms']} ms, errors {result['error_ratio']:.2%}, "
                    f"x-cache {result['x_cache']}, cpu {result['cpu_percent']}")
                if (latency["p95_ms"] or 0) > GIVE_UP_P95_MS or result["error_ratio"] > 0.05:
                    log(f"{mode}: saturated at {rate}/s; not rising further")
                    break
        stop(api)
    finally:
        stack.stop()
    summary = summarise(results)
    log(f"summary: {summary}")
    body = {"benchmark": "api", "orders_seeded": orders, "rates": rates, "step_s": duration_s, "machine": info,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "summary": summary, "results": results}
    charts = [
        ("", {"title": "REST p95 latency vs offered rate", "x_label": "requests/s offered", "y_label": "ms (log)",
              "log_y": True, "series": {mode: [(r["offered_per_s"], r["latency"]["p95_ms"]) for r in rows]
                                        for mode, rows in results.items()}}),
        ("-throughput", {"title": "REST achieved vs offered", "x_label": "requests/s offered",
                         "y_label": "ok requests/s",
                         "series": {mode: [(r["offered_per_s"], r["achieved_per_s"]) for r in rows]
                                    for mode, rows in results.items()}}),
    ]
    for path in write_report("api", body, charts):
        log(f"wrote {path}")
    return 0


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Sustained rate = the highest achieved rate whose p95 stayed under 100 ms with < 1% errors."""
    out: dict[str, Any] = {}
    for mode, rows in results.items():
        good = [r for r in rows if r["latency"]["p95_ms"] is not None and r["latency"]["p95_ms"] < P95_LIMIT_MS
                and r["error_ratio"] < 0.01]
        out[mode] = {"sustained_per_s_p95_under_100ms": max((r["achieved_per_s"] for r in good), default=0.0),
                     "steps": [{"offered": r["offered_per_s"], **r["latency"]} for r in rows]}
    cached, uncached = results["catalog_cached"], results["catalog_uncached"]
    common_rate = next((r["offered_per_s"] for r in cached if r["offered_per_s"] in
                        {u["offered_per_s"] for u in uncached}), None)
    if common_rate is not None:
        c = next(r for r in cached if r["offered_per_s"] == common_rate)
        u = next(r for r in uncached if r["offered_per_s"] == common_rate)
        out["cached_vs_uncached"] = {
            "at_rate": common_rate,
            "p50_uncached_over_cached": round(u["latency"]["p50_ms"] / c["latency"]["p50_ms"], 2),
            "p95_uncached_over_cached": round(u["latency"]["p95_ms"] / c["latency"]["p95_ms"], 2),
            "sustained_cached_over_uncached": round(
                out["catalog_cached"]["sustained_per_s_p95_under_100ms"]
                / max(out["catalog_uncached"]["sustained_per_s_p95_under_100ms"], 1e-9), 2),
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
