"""The whole dev stack for `dms up`: embedded servers (or given URLs), migrations, seed, processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from common import embedded, nginx
from common.auth import mint_token
from common.config import DEV_JWT_SECRET
from common.migrations import migrate
from common.seed import DEMO, demo_id, seed_demo

DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799


def _pick_port(preferred: int) -> int:
    return preferred if embedded.port_is_free(preferred) else embedded.free_port()


def spread_ports(api_port: int, gateway_port: int, *, apis: int, gateways: int) -> tuple[list[int], list[int]]:
    """Consecutive ports from API_PORT for the APIs and from GATEWAY_PORT for the gateways,
    skipping ports the APIs took (defaults: 2 and 2 give 8000, 8001 and 8002, 8003)."""
    api_ports = [api_port + n for n in range(apis)]
    gateway_ports: list[int] = []
    port = gateway_port
    while len(gateway_ports) < gateways:
        if port not in api_ports:
            gateway_ports.append(port)
        port += 1
    return api_ports, gateway_ports


@dataclass
class Child:
    """How to start one process of the stack again: its name, environment and health URL."""

    name: str
    port: int
    env: dict[str, str]
    ready_url: str


@dataclass
class Stack:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: list[embedded.ServerProcess] = field(default_factory=list)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    api_count: int = 1
    gateway_count: int = 1
    nginx_port: int | None = nginx.DEFAULT_PORT  # None: no nginx even when it is installed
    specs: dict[str, Child] = field(default_factory=dict)
    nginx_skipped: str = ""
    restarts: int = 0
    settle_s: float = 0.0  # pause after each restarted process, so nginx takes it back first

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self, **values: Any) -> None:
        state = self._state()
        state.update(values)
        self.state_file.write_text(json.dumps(state))

    # -- infrastructure ------------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.environ.get("DATABASE_URL"):
            self.env["DATABASE_URL"] = os.environ["DATABASE_URL"]
            logger.info("using DATABASE_URL from the environment")
        else:
            self.env["DATABASE_URL"] = self._embedded_postgres()
        if os.environ.get("REDIS_URL"):
            self.env["REDIS_URL"] = os.environ["REDIS_URL"]
            logger.info("using REDIS_URL from the environment")
        else:
            self.env["REDIS_URL"] = self._embedded_redis()

    def _embedded_postgres(self) -> str:
        data_dir = self.home / "postgres" / "data"
        running = embedded.running_postgres(data_dir)
        state = self._state()
        if running is not None and "pg_port" in state:
            logger.info("reusing PostgreSQL (pid {}) on port {}", running, state["pg_port"])
            port = state["pg_port"]
        else:
            port = _pick_port(state.get("pg_port", DEFAULT_PG_PORT))
            started = time.monotonic()
            self.servers.append(embedded.start_postgres(data_dir, port=port, durable=True))
            self._save_state(pg_port=port)
            logger.info("PostgreSQL up on port {} in {:.1f}s", port, time.monotonic() - started)
        return embedded.create_database(port, "dms")

    def _embedded_redis(self) -> str:
        state = self._state()
        port = state.get("redis_port", DEFAULT_REDIS_PORT)
        pid = state.get("redis_pid")
        if pid and not embedded.port_is_free(port) and embedded._pid_alive(pid):
            logger.info("reusing Redis (pid {}) on port {}", pid, port)
        else:
            port = _pick_port(port)
            server = embedded.start_redis(self.home / "redis", port=port, persist=True)
            self.servers.append(server)
            self._save_state(redis_port=port, redis_pid=server.pid)
            logger.info("Redis up on port {}", port)
        return f"redis://127.0.0.1:{port}/0"

    # -- application ---------------------------------------------------------------------------
    def prepare_database(self) -> None:
        applied = migrate(self.env["DATABASE_URL"])
        logger.info("migrations: {} applied", len(applied))
        counts = seed_demo(self.env["DATABASE_URL"])
        logger.info("demo data present: {}", counts)

    def write_env_file(self) -> Path:
        base = {
            "JWT_SECRET": os.environ.get("JWT_SECRET", DEV_JWT_SECRET),
            "API_HOST": os.environ.get("API_HOST", "127.0.0.1"),
            "API_PORT": os.environ.get("API_PORT", "8000"),
            "GATEWAY_HOST": os.environ.get("GATEWAY_HOST", "127.0.0.1"),
            "GATEWAY_PORT": os.environ.get("GATEWAY_PORT", "8001"),
        }
        self.env.update(base)
        self.env["API_URL"] = f"http://{base['API_HOST']}:{base['API_PORT']}"
        self.env["GATEWAY_URL"] = f"ws://{base['GATEWAY_HOST']}:{base['GATEWAY_PORT']}/ws"
        # Handy for the README walk-through; not read by any process.
        if self._use_nginx():
            self.env["NGINX_URL"] = f"http://127.0.0.1:{self.nginx_port}"
            # Behind nginx the API believes X-Forwarded-For from nginx only (loopback here).
            self.env["TRUSTED_PROXIES"] = os.environ.get("TRUSTED_PROXIES", "127.0.0.1")
        self.env["DEMO_RESTAURANT_ID"] = DEMO.restaurant
        self.env["DEMO_PRODUCT_ID"] = demo_id("product:1")
        path = self.home / "env"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.env.items()))
        return path

    def _use_nginx(self) -> bool:
        if self.nginx_port is None:
            self.nginx_skipped = "nginx: not started (--no-nginx)"
            return False
        if nginx.nginx_binary() is None:
            self.nginx_skipped = "nginx: not installed, skipped (APIs and gateways are reachable directly)"
            return False
        return True

    def start_processes(self, *, timeout_s: float = 60.0) -> None:
        """N APIs and M gateways on consecutive ports, then nginx in front of them when installed."""
        host, gw_host = self.env["API_HOST"], self.env["GATEWAY_HOST"]
        api_ports, gateway_ports = spread_ports(int(self.env["API_PORT"]), int(self.env["GATEWAY_PORT"]),
                                                apis=self.api_count, gateways=self.gateway_count)
        for n, port in enumerate(api_ports):
            name = "api" if self.api_count == 1 else f"api-{n}"
            self.specs[name] = Child(name, port, {"API_PORT": str(port)}, f"http://{host}:{port}/ready")
        for n, port in enumerate(gateway_ports):
            name = "gateway" if self.gateway_count == 1 else f"gateway-{n}"
            settings = {"GATEWAY_PORT": str(port)}
            if self.gateway_count > 1:
                settings["GATEWAY_ID"] = os.environ.get("GATEWAY_ID", "gw") + f"-{n}"
            self.specs[name] = Child(name, port, settings, f"http://{gw_host}:{port}/health")
        for spec in self.specs.values():
            self.children.append((spec.name, self._spawn(spec)))
        for spec in self.specs.values():
            self._wait_http(spec.ready_url, spec.name, timeout_s)
        if self._use_nginx():
            assert self.nginx_port is not None
            site = nginx.Site(api_ports=tuple(api_ports), gateway_ports=tuple(gateway_ports),
                              listen_port=self.nginx_port, upstream_host=host)
            server = nginx.start(site, self.home / "nginx")
            assert server.process is not None
            self.children.append(("nginx", server.process))
            self.settle_s = site.fail_timeout_s
        self._write_children_state()

    def _spawn(self, spec: Child) -> subprocess.Popen[bytes]:
        module = spec.name.split("-")[0]
        return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **self.env, **spec.env},
                                stdin=subprocess.DEVNULL)

    def _write_children_state(self) -> None:
        """What `dms restart` and operators read: the supervisor's pid and every child's pid and port."""
        ports = {name: spec.port for name, spec in self.specs.items()}
        if self.nginx_port is not None:
            ports["nginx"] = self.nginx_port
        self._save_state(
            dms_pid=os.getpid(),
            restarts=self.restarts,
            children=[{"name": name, "pid": process.pid, "port": ports.get(name)} for name, process in self.children],
        )

    def rolling_restart(self, *, should_continue: Callable[[], bool] = lambda: True,
                        timeout_s: float = 60.0) -> None:
        """Restart APIs and gateways one at a time: SIGTERM (APIs finish their requests, gateways
        drain), wait for the exit, start it again, wait until it is ready, then the next one.
        nginx stays up and sends traffic to the others meanwhile."""
        for index, (name, process) in enumerate(list(self.children)):
            spec = self.specs.get(name)
            if spec is None or not should_continue():
                continue
            started = time.monotonic()
            _stop_child(name, process, timeout_s=30)
            self.children[index] = (name, self._spawn(spec))
            self._wait_http(spec.ready_url, name, timeout_s)
            logger.info("restarted {} in {:.1f}s", name, time.monotonic() - started)
            time.sleep(self.settle_s)
        self.restarts += 1
        self._write_children_state()

    def _wait_http(self, url: str, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child_name, process in self.children:
                if process.poll() is not None:
                    raise RuntimeError(f"{child_name} exited with code {process.returncode} during start-up")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} was not ready at {url} within {timeout_s:.0f}s")

    def banner(self) -> str:
        secret = self.env["JWT_SECRET"]
        tokens = {
            "admin": mint_token(secret, role="admin", sub=DEMO.admin),
            "restaurant": mint_token(secret, role="restaurant", sub=DEMO.restaurant_user,
                                     restaurant_id=DEMO.restaurant),
            "driver": mint_token(secret, role="driver", sub=DEMO.driver),
            "demo": mint_token(secret, role="demo", sub=DEMO.demo_user, restaurant_id=DEMO.restaurant),
        }
        lines = [
            "",
            "dms is up",
            f"  REST API    {self.env['API_URL']}   (ready: {self.env['API_URL']}/ready)",
            f"  WebSocket   {self.env['GATEWAY_URL']}?token=<token>",
            *self._topology_lines(),
            f"  settings    {self.home / 'env'}",
            f"  demo restaurant id  {DEMO.restaurant}",
            "  demo tokens (valid 24 h):",
            *[f"    {role:<10} {token}" for role, token in tokens.items()],
            "  Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    def _topology_lines(self) -> list[str]:
        lines = []
        if len(self.specs) > 2:
            lines.append("  processes   " + ", ".join(f"{name}:{spec.port}" for name, spec in self.specs.items()))
        if "NGINX_URL" in self.env:
            url = self.env["NGINX_URL"]
            lines.append(f"  nginx       {url}   (REST {url}/api, WebSocket {url.replace('http', 'ws', 1)}/ws)")
            lines.append("  rolling restart: dms restart")
        elif self.nginx_skipped:
            lines.append(f"  {self.nginx_skipped}")
        return lines

    def stop(self) -> None:
        """Children first (they drain), then the servers we started; never leaves orphans."""
        for _, process in self.children:  # all drain at once, then we wait for each
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.children:
            _stop_child(name, process, timeout_s=20)
        for server in reversed(self.servers):
            server.stop(sig=signal.SIGINT if server.name == "postgres" else signal.SIGTERM)
        self.children.clear()
        self.servers.clear()


def _stop_child(name: str, process: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """SIGTERM (a child drains on it), wait, and kill what does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("{} did not stop in {}s; killing it", name, timeout_s)
        process.kill()
        process.wait(timeout=5)
