"""`dms up --api 2 --gateways 2` behind nginx, and `dms restart` while orders flow: nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.auth import mint_token
from devstack import embedded
from devstack.seed import DEMO, demo_id
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import ROOT, http_json, seconds, wait_for
from tests.topology.support import FAST_LIMITS, Follower, free_ports

pytestmark = pytest.mark.needs_system("nginx")


def _state(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((home / "state.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


@pytest.fixture
def stack(infra: Infra, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`dms up` with its own database and Redis database, two APIs, two gateways and nginx."""
    home = tmp_path / "dms"
    api_port, gateway_port, nginx_port = free_ports(2), free_ports(2), embedded.free_port()
    env = {
        **os.environ,
        **infra.env(**FAST_LIMITS),
        "DATABASE_URL": embedded.create_database(infra.postgres.port, "dms_rolling"),
        # Its own Redis database: the relay leader lock and gateway stats stay apart from other tests.
        "REDIS_URL": infra.redis_url.rsplit("/", 1)[0] + "/3",
        "DMS_HOME": str(home), "API_PORT": str(api_port), "GATEWAY_PORT": str(gateway_port),
    }
    env.pop("DATABASE_LISTEN_URL", None)
    log = open(tmp_path / "dms-up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "devstack.cli", "up", "--api", "2", "--gateways", "2",
                           "--nginx-port", str(nginx_port)], env=env, cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def up_and_running() -> bool:
            assert up.poll() is None, (tmp_path / "dms-up.log").read_text()[-3000:]
            return any(child["name"] == "nginx" for child in _state(home).get("children", []))

        wait_for(up_and_running, timeout_s=60, interval_s=0.2, message="dms up")
        yield {"home": home, "env": env, "nginx": f"127.0.0.1:{nginx_port}", "log": tmp_path / "dms-up.log",
               "api_ports": [api_port, api_port + 1], "gateway_ports": [gateway_port, gateway_port + 1]}
    finally:
        pids = [child["pid"] for child in _state(home).get("children", [])]
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=seconds(40))
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(timeout=10)
        for pid in pids:  # never leave an orphan, even after a failed test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def test_rolling_restart_loses_no_event_and_fails_no_retried_request(stack: dict[str, Any]) -> None:
    base = f"http://{stack['nginx']}"
    banner = stack["log"].read_text()
    assert f"nginx       {base}" in banner and "api-1:" in banner and "gateway-1:" in banner
    env_file = (stack["home"] / "env").read_text()
    assert f"NGINX_URL={base}" in env_file and "TRUSTED_PROXIES=127.0.0.1" in env_file

    token = mint_token(JWT_SECRET, role="restaurant", sub=DEMO.restaurant_user, restaurant_id=DEMO.restaurant)
    channel = f"restaurant:{DEMO.restaurant}"
    followers = [Follower(f"ws://{stack['nginx']}/ws", token, channel).start() for _ in range(4)]
    for follower in followers:
        assert follower.subscribed.wait(seconds(10))

    created: list[str] = []
    attempts: list[int] = []
    failed: list[str] = []
    statuses: list[int] = []  # of failed attempts
    stop = threading.Event()

    def place_orders() -> None:
        """A well-behaved client: one Idempotency-Key per order, retried with backoff on failure."""
        while not stop.is_set():
            key = str(uuid.uuid4())
            for attempt in range(1, 9):
                try:
                    status, _, body = http_json("POST", f"{base}/api/orders",
                                                {"items": [{"product_id": demo_id("product:1"), "quantity": 1}]},
                                                token=token, headers={"Idempotency-Key": key}, timeout_s=10)
                except (OSError, ValueError) as exc:
                    status, body = 0, str(exc)
                if status == 201:
                    created.append(body["id"])
                    attempts.append(attempt)
                    break
                statuses.append(status)
                time.sleep(0.1 * attempt)
            else:
                failed.append(key)
            time.sleep(0.03)

    writer = threading.Thread(target=place_orders, daemon=True)
    writer.start()
    try:
        wait_for(lambda: len(created) >= 10, timeout_s=15, message="orders before the restart")
        before = {child["name"]: child["pid"] for child in _state(stack["home"])["children"]}
        started = time.monotonic()
        restart = subprocess.run([sys.executable, "-m", "devstack.cli", "restart", "--timeout", str(seconds(90))],
                                 env=stack["env"], cwd=ROOT, capture_output=True, text=True, timeout=seconds(120))
        took = time.monotonic() - started
        assert restart.returncode == 0, restart.stdout + restart.stderr
        after = {child["name"]: child["pid"] for child in _state(stack["home"])["children"]}
        time.sleep(1)  # a little traffic on the restarted processes
    finally:
        stop.set()
        writer.join(timeout=30)
    try:
        assert all(before[name] != after[name] for name in ("api-0", "api-1", "gateway-0", "gateway-1"))
        assert before["nginx"] == after["nginx"]
        for follower in followers:
            wait_for(lambda f=follower: {e["data"]["order_id"] for e in f.events  # type: ignore[misc]
                                         if e["event"] == "order.created"} >= set(created),
                     timeout_s=15, message="every order.created at every follower")
        lost = [len(set(created) - {e["data"]["order_id"] for e in f.events if e["event"] == "order.created"})
                for f in followers]
        retried = sum(1 for n in attempts if n > 1)
        print(f"\nrolling restart of 2 APIs + 2 gateways in {took:.1f}s: {len(created)} orders, "
              f"{retried} needed a retry {statuses}, {len(failed)} failed after retries; "
              f"events lost per client {lost}; "
              f"reconnects per client {[f.connects - 1 for f in followers]}")
        assert failed == [] and lost == [0, 0, 0, 0]
        assert len(set(created)) == len(created)
    finally:
        for follower in followers:
            follower.stop()
