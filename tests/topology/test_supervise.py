"""`dms up` keeps serving when one of its processes dies, and its live pages reach a gateway.

One `dms up --api 2 --gateways 2` behind nginx, with its own embedded PostgreSQL and Redis, serves
the whole module: a gateway, an API, Redis and PostgreSQL are killed in turn while a REST writer,
a GPS driver and subscribers work through nginx; the last test drives a process into a crash loop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.auth import mint_token
from common.events import ALL_ORDERS
from devstack import embedded
from tests.faults.harness import Stack as FaultStack
from tests.faults.harness import Stream, assert_lossless
from tests.fix_infra import JWT_SECRET
from tests.helpers import ROOT, WsClient, http_json, seconds, wait_for
from tests.topology.support import FAST_LIMITS, free_ports


@dataclass
class Up:
    """A running `dms up` and what a test needs to reach it."""

    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    nginx: str | None  # host:port
    env: dict[str, str]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        import json

        try:
            return dict(json.loads((self.home / "state.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def entry(self, name: str) -> dict[str, Any]:
        state = self.state()
        return next(e for e in state.get("children", []) + state.get("servers", []) if e["name"] == name)

    def settings(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in (self.home / "env").read_text().splitlines())

    def port(self, name: str) -> int:
        return int(self.entry(name)["port"])

    def wait_back(self, name: str, old_pid: int, *, timeout_s: float = 30) -> dict[str, Any]:
        def back() -> dict[str, Any] | None:
            assert self.proc.poll() is None, self.text()[-3000:]
            entry = self.entry(name)
            return entry if entry["pid"] != old_pid and entry["state"] == "up" else None

        return wait_for(back, timeout_s=timeout_s, interval_s=0.05, message=f"{name} restarted and ready")

    def stop(self) -> int:
        pids = [e["pid"] for e in self.state().get("children", []) + self.state().get("servers", [])]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=seconds(60))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in pids:  # never leave an orphan, even after a failed test
            try:
                os.killpg(pid, signal.SIGKILL) if pid else None
            except (ProcessLookupError, PermissionError):
                pass
        return self.proc.returncode


def start_up(tmp: Path, *args: str, nginx: bool = True, **settings: str) -> Up:
    """`dms up --api 2 --gateways 2` on free ports with its own embedded PostgreSQL and Redis."""
    home = tmp / "dms"
    # The default layout (API_PORT 8000, GATEWAY_PORT 8001) shifted: the gateways start after the APIs.
    api_port = free_ports(4)
    gateway_port = api_port + 1
    nginx_port = free_ports(1)
    env = {**os.environ, **FAST_LIMITS, "JWT_SECRET": JWT_SECRET, "DMS_ENV": "test", "DMS_HOME": str(home),
           "API_PORT": str(api_port), "GATEWAY_PORT": str(gateway_port), **settings}
    for key in ("DATABASE_URL", "DATABASE_LISTEN_URL", "REDIS_URL", "PUBLIC_GATEWAY_URL"):
        env.pop(key, None)
    log = tmp / "dms-up.log"
    command = [sys.executable, "-m", "devstack.cli", "up", "--api", "2", "--gateways", "2", *args]
    command += ["--nginx-port", str(nginx_port)] if nginx else ["--no-nginx"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    up = Up(proc, home, log, f"127.0.0.1:{nginx_port}" if nginx else None, env)
    try:
        wait_for(lambda: "dms is up" in up.text() or proc.poll() is not None, timeout_s=120, interval_s=0.2,
                 message="the dms up banner")
        assert proc.poll() is None, up.text()[-3000:]
    except BaseException:
        up.stop()
        raise
    return up


def _page_gateway_url(html: str) -> str:
    match = re.search(r'data-gateway-url="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def _pages_reach_a_gateway(up: Up, bases: list[str]) -> str:
    """Every /board and /admin, from every base URL, names one gateway URL that answers a WebSocket."""
    import urllib.request

    urls = set()
    for base in bases:
        for page in ("board", "admin"):
            with urllib.request.urlopen(f"{base}/{page}", timeout=seconds(10)) as response:
                url = _page_gateway_url(response.read().decode())
                csp = response.headers["Content-Security-Policy"]
            assert url.rsplit("/", 1)[0] in csp, csp  # the page's socket is allowed by its policy
            urls.add(url)
    assert len(urls) == 1, urls
    (url,) = urls
    client = WsClient.connect(url, token=mint_token(JWT_SECRET, role="admin"), origin=bases[0])
    try:
        assert client.recv()["type"] == "welcome"
    finally:
        client.close()
    return url


# -- live pages (issue: dead pages with several APIs) -------------------------------------------------
def test_pages_and_gateway_url_reach_a_gateway_without_nginx(tmp_path: Path) -> None:
    up = start_up(tmp_path, nginx=False)
    try:
        apis = [f"http://127.0.0.1:{up.port(name)}" for name in ("api-0", "api-1")]
        gateway_url = up.settings()["GATEWAY_URL"]
        assert gateway_url == f"ws://127.0.0.1:{up.port('gateway-0')}/ws"
        assert f"WebSocket   {gateway_url}" in up.text()
        assert _pages_reach_a_gateway(up, apis) == gateway_url
    finally:
        assert up.stop() == 0


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    if embedded.system_program("nginx") is None:
        pytest.skip("skipped: needs nginx, which pip cannot install")
    running = start_up(tmp_path_factory.mktemp("supervise"))
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.needs_system("nginx")
def test_pages_and_gateway_url_reach_a_gateway_through_nginx(up: Up) -> None:
    base = f"http://{up.nginx}"
    gateway_url = up.settings()["GATEWAY_URL"]
    assert gateway_url == f"ws://{up.nginx}/ws"
    assert f"WebSocket   {gateway_url}" in up.text()
    apis = [f"http://127.0.0.1:{up.port(name)}" for name in ("api-0", "api-1")]
    assert _pages_reach_a_gateway(up, [base, *apis]) == gateway_url


# -- supervision --------------------------------------------------------------------------------------
def _stream(up: Up, tmp: Path) -> tuple[FaultStack, Stream]:
    """The fault harness's writer, GPS driver and three subscribers, all through nginx."""
    stack = FaultStack(infra=SimpleNamespace(database_url=up.settings()["DATABASE_URL"]),  # type: ignore[arg-type]
                       logs=tmp)
    stack.seed()
    stack.api_url = f"http://{up.nginx}"
    through_nginx = [f"ws://{up.nginx}/ws"]
    stream = Stream(stack, subscribers=3, subscriber_urls=lambda: through_nginx, gps_urls=lambda: through_nginx)
    return stack, stream.start()


def _first_event_through(port: int, after: float) -> float:
    """When a subscriber connected straight to this gateway got its first live event (epoch seconds)."""
    client = WsClient.connect(f"ws://127.0.0.1:{port}/ws", token=mint_token(JWT_SECRET, role="admin"))
    try:
        assert client.subscribe(ALL_ORDERS)["type"] == "subscribed"
        client.events(1, channel=ALL_ORDERS, timeout_s=20)
        return max(time.time(), after)
    finally:
        client.close()


def _nginx_sends_new_clients_to(up: Up, name: str) -> int:
    """Open WebSockets through nginx until one lands on `name`; return how many it took."""
    clients: list[WsClient] = []
    try:
        def landed() -> bool:
            client = WsClient.connect(f"ws://{up.nginx}/ws", token=mint_token(JWT_SECRET, role="admin"))
            clients.append(client)
            client.recv()
            _, _, health = http_json("GET", f"http://127.0.0.1:{up.port(name)}/health")
            return bool(health["connections"] > 0)

        wait_for(landed, timeout_s=20, interval_s=0.2, message=f"nginx sending a new client to {name}")
        return len(clients)
    finally:
        for client in clients:
            client.close()


@pytest.mark.needs_system("nginx")
@pytest.mark.parametrize("victim", ["gateway-0", "api-0"])
def test_a_killed_process_is_restarted_and_nothing_is_lost(up: Up, victim: str, tmp_path: Path) -> None:
    stack, stream = _stream(up, tmp_path)
    try:
        wait_for(lambda: stream.writer.counts.sent >= 10, timeout_s=20, message="orders before the kill")
        old = up.entry(victim)
        stream.mark_fault()
        killed_at = time.time()
        os.kill(old["pid"], signal.SIGKILL)
        entry = up.wait_back(victim, old["pid"])
        back_at = time.time()
        assert entry["restarts"] == old["restarts"] + 1 and entry["last_exit"] == -signal.SIGKILL
        if victim.startswith("gateway"):
            first_at = _first_event_through(up.port(victim), back_at)
            tries = _nginx_sends_new_clients_to(up, victim)
            through = f"first event through the restarted gateway +{first_at - killed_at:.2f}s; "
            through += f"nginx sent it a new client after {tries} connection(s)"
        else:
            sent = stream.writer.counts.sent
            wait_for(lambda: stream.writer.counts.sent >= sent + 5, timeout_s=20, message="orders after the restart")
            through = "orders kept flowing through nginx"
        result = stream.finish(f"kill -9 {victim} under dms up", settle_s=30)
        timeline = (f"{victim} SIGKILL at +0.00s; restarted and ready at +{back_at - killed_at:.2f}s "
                    f"(supervisor: down {entry['last_downtime_s']}s); {through}; "
                    f"REST {result.rest_sent} sent, {result.rest_retried_ok} needed a retry, "
                    f"{result.rest_failed} failed")
        print(f"\ntimeline: {timeline}")
        assert_lossless(result)
        assert f"{victim} exited unexpectedly with code -9" in up.text()
        status = subprocess.run([sys.executable, "-m", "devstack.cli", "status"], env=up.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=seconds(30), check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        line = next(line for line in status.stdout.splitlines() if line.startswith(victim + " "))
        assert f" {entry['pid']} " in line and " up " in line and "-9" in line, status.stdout
    finally:
        stack.stop()


@pytest.mark.needs_system("nginx")
def test_lost_nginx_redis_and_postgres_come_back_with_their_data(up: Up) -> None:
    base = f"http://{up.nginx}"
    token = mint_token(JWT_SECRET, role="admin")
    stack = FaultStack(infra=SimpleNamespace(database_url=up.settings()["DATABASE_URL"]),  # type: ignore[arg-type]
                       logs=up.home)
    stack.seed()
    body = {"restaurant_id": stack.restaurant_id, "items": [{"product_id": stack.product_ids[0], "quantity": 1}]}
    status, _, order = http_json("POST", f"{base}/api/orders", body, token=token)
    assert status == 201, order
    for server in ("nginx", "redis", "postgres"):
        old = up.entry(server)
        os.kill(old["pid"], signal.SIGKILL)
        entry = up.wait_back(server, old["pid"], timeout_s=60)
        assert entry["port"] == old["port"] and entry["restarts"] == old["restarts"] + 1
        print(f"\n{server} SIGKILL: back on port {entry['port']} after {entry['last_downtime_s']}s")
        if server == "nginx":  # its orphaned worker was cleared, so the new master could bind the port
            assert http_json("GET", f"{base}/health")[0] == 200
    # The order written before both crashes is still there, and new writes reach subscribers.
    subscriber = WsClient.connect(f"ws://{up.nginx}/ws", token=token)
    try:
        def reads_back() -> bool:
            status, _, again = http_json("GET", f"{base}/api/orders/{order['id']}", token=token)
            return status == 200 and again["id"] == order["id"]

        wait_for(reads_back, timeout_s=30, interval_s=0.3, message="the order written before the crashes")
        wait_for(lambda: subscriber.subscribe(ALL_ORDERS)["type"] == "subscribed", timeout_s=20)
        status, _, fresh = http_json("POST", f"{base}/api/orders", body, token=token,
                                     headers={"Idempotency-Key": f"after-crash-{time.time_ns()}"})
        assert status == 201, fresh
        subscriber.recv_until(lambda f: f.get("type") == "event" and f["data"].get("order_id") == fresh["id"],
                              timeout_s=20)
    finally:
        subscriber.close()
    assert up.proc.poll() is None


@pytest.mark.needs_system("nginx")
def test_a_crash_loop_stops_the_stack_with_one_clear_line(up: Up) -> None:
    """Runs last: gateway-1 is killed every time it comes back, until the crash-loop rule trips."""
    limit, window = up.state()["crash_limit"]
    kills = 0
    pid = up.entry("gateway-1")["pid"]
    deadline = time.monotonic() + seconds(120)
    while up.proc.poll() is None and time.monotonic() < deadline:
        entry = up.entry("gateway-1")
        if entry["pid"] != pid or kills == 0:
            pid = entry["pid"]
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    code = up.proc.wait(timeout=seconds(60))
    lines = [line for line in up.text().splitlines() if line.startswith("dms up:")]
    print(f"\ncrash loop after {kills} kills: {lines}")
    assert code == 1 and kills == limit, up.text()[-3000:]
    assert lines == [f"dms up: gateway-1 exited unexpectedly {limit} times within {window:.0f}s "
                     f"(last exit code -9); stopping the stack"]
    # Everything else went down cleanly with it.
    for entry in up.state()["children"] + up.state()["servers"]:
        wait_for(lambda e=entry: not _running(e["pid"]), timeout_s=30,  # type: ignore[misc]
                 message=f"{entry['name']} stopped")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
