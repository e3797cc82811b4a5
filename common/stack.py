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
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from common import embedded
from common.auth import mint_token
from common.config import DEV_JWT_SECRET
from common.migrations import migrate
from common.seed import DEMO, demo_id, seed_demo

DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799


def _pick_port(preferred: int) -> int:
    return preferred if embedded.port_is_free(preferred) else embedded.free_port()


@dataclass
class Stack:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: list[embedded.ServerProcess] = field(default_factory=list)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    def _state(self) -> dict[str, int]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self, **values: int) -> None:
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
        self.env["DEMO_RESTAURANT_ID"] = DEMO.restaurant
        self.env["DEMO_PRODUCT_ID"] = demo_id("product:1")
        path = self.home / "env"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.env.items()))
        return path

    def start_processes(self, *, timeout_s: float = 60.0) -> None:
        child_env = {**os.environ, **self.env}
        for name, module in (("api", "api"), ("gateway", "gateway")):
            process = subprocess.Popen([sys.executable, "-m", module], env=child_env, stdin=subprocess.DEVNULL)
            self.children.append((name, process))
        self._wait_http(self.env["API_URL"] + "/ready", "api", timeout_s)
        gateway_health = f"http://{self.env['GATEWAY_HOST']}:{self.env['GATEWAY_PORT']}/health"
        self._wait_http(gateway_health, "gateway", timeout_s)

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
            f"  settings    {self.home / 'env'}",
            f"  demo restaurant id  {DEMO.restaurant}",
            "  demo tokens (valid 24 h):",
            *[f"    {role:<10} {token}" for role, token in tokens.items()],
            "  Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    def stop(self) -> None:
        """Children first (they drain), then the servers we started; never leaves orphans."""
        for _, process in self.children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.children:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                logger.warning("{} did not stop; killing it", name)
                process.kill()
                process.wait(timeout=5)
        for server in reversed(self.servers):
            server.stop(sig=signal.SIGINT if server.name == "postgres" else signal.SIGTERM)
        self.children.clear()
        self.servers.clear()
