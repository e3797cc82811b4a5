"""What both swarms share: settings from the environment, tokens, command-line options, thresholds.

Not named `common` on purpose: locust puts this directory on sys.path, and the project's
`common` package must stay importable.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import events
from locust.env import Environment

from common.auth import mint_token
from common.config import DEV_JWT_SECRET
from devstack.seed import CATEGORIES, NOUNS, RESTAURANTS, demo_id

JWT_SECRET = os.environ.get("JWT_SECRET", DEV_JWT_SECRET)
RESTAURANT_IDS = [rid for rid, _, _ in RESTAURANTS]
# Every 25th demo product is inactive (devstack.seed); ordering one would be a 422.
ACTIVE_PRODUCTS = [demo_id(f"product:{n}") for n in range(1000) if n % 25 != 0]
SEARCH_WORDS = [noun.split()[0] for noun in NOUNS]
P95_LIMIT_MS = float(os.environ.get("DMS_P95_LIMIT_MS", "200"))
FAIL_RATIO_LIMIT = float(os.environ.get("DMS_FAIL_RATIO_LIMIT", "0.01"))


def token(role: str, *, restaurant_id: str | None = None, sub: str | None = None) -> tuple[str, str]:
    """(user id, bearer token) for a fresh identity of `role`: each simulated user is its own person."""
    user_id = sub or str(uuid.uuid4())
    return user_id, mint_token(JWT_SECRET, role=role, sub=user_id, restaurant_id=restaurant_id, ttl_s=6 * 3600)


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


def order_body() -> dict[str, Any]:
    items = [{"product_id": product, "quantity": random.randint(1, 5)}
             for product in random.sample(ACTIVE_PRODUCTS, random.randint(1, 3))]
    return {"items": items, "customer_name": f"Swarm {random.randint(1, 999)}"}


def catalogue_query() -> str:
    roll = random.random()
    if roll < 0.4:
        return f"/api/products?category={random.choice(CATEGORIES)}"
    if roll < 0.8:
        return f"/api/products?q={random.choice(SEARCH_WORDS)}&category={random.choice(CATEGORIES)}"
    return f"/api/products?q={random.choice(SEARCH_WORDS)}"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--scenario", env_var="DMS_SCENARIO", default="custom",
                        choices=["custom", "baseline", "spike", "stress", "soak"],
                        help="REST load shape: baseline 100 req/s, spike to 500 req/s, stress until it breaks, "
                             "soak (steady, watching API memory); custom uses -u/-r/-t")
    parser.add_argument("--soak-seconds", env_var="DMS_SOAK_SECONDS", type=float, default=600.0)
    parser.add_argument("--gateway-url", env_var="GATEWAY_URL", default="ws://127.0.0.1:8001/ws")
    parser.add_argument("--api-pid", env_var="DMS_API_PID", type=int, default=0,
                        help="the API's pid, for RSS sampling during soak (found by port when local)")


def fail(environment: Environment, reason: str) -> None:
    """A broken threshold: say why and make locust exit non-zero (never reset by a later check)."""
    print(f"THRESHOLD FAILED: {reason}", flush=True)
    environment.process_exit_code = 1


def check_thresholds(environment: Environment, *, request_types: tuple[str, ...] | None = None) -> None:
    """p95 < DMS_P95_LIMIT_MS and failures < DMS_FAIL_RATIO_LIMIT over the chosen request types."""
    entries = [entry for (name, method), entry in environment.stats.entries.items()
               if request_types is None or method in request_types]
    if not entries:
        return
    from locust.stats import StatsEntry

    total = StatsEntry(environment.stats, "selected", "")
    for entry in entries:
        total.extend(entry)
    p95 = total.get_response_time_percentile(0.95) or 0.0
    ratio = total.fail_ratio
    label = "+".join(request_types) if request_types else "all"
    print(f"[{label}] requests {total.num_requests}, failures {total.num_failures} ({ratio:.2%}), "
          f"p50 {total.get_response_time_percentile(0.5)} ms, p95 {p95} ms, p99 "
          f"{total.get_response_time_percentile(0.99)} ms, load {os.getloadavg()}", flush=True)
    if total.num_requests == 0:
        fail(environment, f"[{label}] no requests were made")
    if p95 >= P95_LIMIT_MS:
        fail(environment, f"[{label}] p95 {p95} ms >= {P95_LIMIT_MS:g} ms")
    if ratio >= FAIL_RATIO_LIMIT:
        fail(environment, f"[{label}] failure ratio {ratio:.2%} >= {FAIL_RATIO_LIMIT:.0%}")
