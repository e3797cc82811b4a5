"""An open-loop HTTP load generator (gevent + geventhttpclient), one process per step of bench.api.

`python -m bench.loadgen CONFIG_JSON` prints one JSON result line. Requests start on a fixed
schedule whatever the server does, and latency counts from the scheduled start, so a slow
server shows up as latency instead of silently lowering the offered rate.
"""

from gevent import monkey

monkey.patch_all()  # first: the HTTP client must see gevent's sockets

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode, urlsplit  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402

from bench.common import Histogram  # noqa: E402
from devstack.seed import ADJECTIVES, CATEGORIES, NOUNS  # noqa: E402


def build_request(mode: str, config: dict[str, Any], rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) for one request of the mode."""
    tokens: list[str] = config["tokens"]
    headers = {"Authorization": f"Bearer {rng.choice(tokens)}"}
    if mode == "orders":
        items = [{"product_id": product, "quantity": rng.randint(1, 5)}
                 for product in rng.sample(config["products"], rng.randint(1, 3))]
        headers.update({"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex})
        return "POST", "/api/orders", json.dumps({"items": items, "customer_name": "bench"}).encode(), headers
    if mode == "catalog_cached":
        # Ten hot keys, read over and over: what the cache is for.
        return "GET", "/api/products?" + urlencode({"category": rng.choice(CATEGORIES), "limit": 50}), b"", headers
    # Uncached: keys drawn from a space much larger than the requests sent, so nearly every read misses.
    query = {"category": rng.choice(CATEGORIES), "limit": rng.randint(1, 200)}
    if rng.random() < 0.5:
        query["q"] = rng.choice(NOUNS + ADJECTIVES).split()[0]
    if rng.random() < 0.5:
        query["active"] = rng.choice(("true", "false"))
    return "GET", "/api/products?" + urlencode(query), b"", headers


def main() -> int:
    config = json.loads(sys.argv[1])
    # Several API processes: requests go to each in turn, as a round-robin proxy would send them.
    urls = config.get("base_urls") or [config["base_url"]]
    clients = []
    for url in urls:
        target = urlsplit(url)
        clients.append(HTTPClient(target.hostname or "127.0.0.1", target.port,
                                  concurrency=max(4, config["concurrency"] // len(urls)),
                                  connection_timeout=10, network_timeout=30))
    rng = random.Random(config.get("seed", 1))
    hist, statuses, cache = Histogram(), Counter[str](), Counter[str]()
    rate, total = config["rate"], int(config["rate"] * config["duration_s"])
    pool = Pool(config["concurrency"] * 4)

    def one(scheduled: float, request: tuple[str, str, bytes, dict[str, str]], client: HTTPClient) -> None:
        method, path, body, headers = request
        try:
            response = client.request(method, path, body=body, headers=headers)
            response.read()
            statuses[str(response.status_code)] += 1
            cache[response.get("x-cache") or "-"] += 1
        except Exception as exc:  # any transport failure is one failed request here
            statuses[type(exc).__name__] += 1
        hist.add((time.perf_counter() - scheduled) * 1000)

    started, cpu_started = time.perf_counter(), time.process_time()
    for n in range(total):
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        pool.spawn(one, scheduled, build_request(config["mode"], config, rng), clients[n % len(clients)])
    pool.join(timeout=60)
    elapsed = time.perf_counter() - started
    ok = sum(count for status, count in statuses.items() if status.startswith("2"))
    print(json.dumps({"mode": config["mode"], "offered_per_s": rate, "sent": total,
                      "achieved_per_s": round(ok / elapsed, 1), "errors": total - ok,
                      "error_ratio": round((total - ok) / max(total, 1), 4), "statuses": dict(statuses),
                      "x_cache": dict(cache), "latency": hist.summary(),
                      "loadgen_cpu_percent": round(100 * (time.process_time() - cpu_started) / elapsed, 1)}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
