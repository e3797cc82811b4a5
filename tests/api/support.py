"""Small helpers shared by the API tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from tests.helpers import wait_for


def auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def error_code(response: Any) -> str:
    body = response.get_json()
    assert body is not None and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return str(body["error"]["code"])


def create_order(client: Any, token: str, product_id: str, *, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/orders", json={"items": [{"product_id": product_id, "quantity": quantity}],
                                                **extra}, headers=auth(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


@contextmanager
def redis_commands(store: redis.Redis) -> Iterator[dict[str, int]]:
    """The commands Redis ran while the block ran (its own counters; `info` and health-check
    `ping`s left out), filled in when the block ends."""
    def counts() -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in store.info("commandstats").items()}

    before, used = counts(), {}
    yield used
    after = counts()
    used.update({name: after[name] - before.get(name, 0) for name in after
                 if after[name] != before.get(name, 0) and name not in ("info", "ping")})


def clear_of_window_edge(period_s: int = 60, margin_s: float = 5.0) -> None:
    """Fixed rate-limit windows turn on period boundaries; start a counting test well inside one."""
    wait_for(lambda: period_s - time.time() % period_s > margin_s, timeout_s=margin_s + 2, interval_s=0.2,
             message="a fresh rate-limit window")
