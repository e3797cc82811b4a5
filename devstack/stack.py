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

from common.auth import mint_token
from common.config import DEV_JWT_SECRET
from common.migrations import migrate
from devstack import embedded, nginx, tls
from devstack.seed import DEMO, demo_id, seed_demo

DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799
# The crash-loop rule: a process that exits unexpectedly this often within this many seconds
# stops the stack (DMS_CRASH_LIMIT=COUNT/SECONDS changes it). Restarts in between back off:
# 0.5 s after the first crash, doubling up to BACKOFF_MAX_S.
CRASH_LIMIT = (5, 60.0)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
START_TIMEOUT_S = 60.0  # a restarted API or gateway not ready by then counts as another crash


class StackError(RuntimeError):
    """The stack could not start, or cannot keep running; the message says which process and why."""


def crash_limit() -> tuple[int, float]:
    raw = os.environ.get("DMS_CRASH_LIMIT", "")
    if not raw:
        return CRASH_LIMIT
    count, _, window = raw.partition("/")
    try:
        parsed = int(count), float(window)
    except ValueError:
        raise StackError(f"DMS_CRASH_LIMIT must look like 5/60 (crashes/seconds), got {raw!r}") from None
    if parsed[0] < 1 or parsed[1] <= 0:
        raise StackError(f"DMS_CRASH_LIMIT must look like 5/60 (crashes/seconds), got {raw!r}")
    return parsed


def backoff_s(crashes: int) -> float:
    """How long to wait before restarting a process that crashed `crashes` times in the window."""
    return float(min(BACKOFF_FIRST_S * 2 ** max(crashes - 1, 0), BACKOFF_MAX_S))


def _pick_port(preferred: int) -> int:
    return preferred if embedded.port_is_free(preferred) else embedded.stable_free_port()


def _on_a_free_port(preferred: int, start: Callable[[int], embedded.ServerProcess]) -> embedded.ServerProcess:
    """Start a server on `preferred` when free; if another process takes the port meanwhile (a
    second stack starting beside this one, between our check and the server's bind), use another."""
    port = _pick_port(preferred)
    for attempt in range(3):
        try:
            return start(port)
        except embedded.EmbeddedError:
            if attempt == 2 or embedded.port_is_free(port):
                raise  # not a port collision
            logger.warning("port {} was taken while starting; trying another", port)
            port = embedded.stable_free_port()
    raise AssertionError("unreachable")


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
class Health:
    """What the supervisor knows of one process: its unexpected exits and where its restart stands."""

    state: str = "up"  # up | waiting (backing off) | starting (spawned, not ready yet)
    crashes: list[float] = field(default_factory=list)  # monotonic times, within the crash window
    restarts: int = 0  # restarts after a crash (rolling restarts are counted by the stack)
    last_exit: int | None = None
    down_since: float = 0.0
    restart_at: float = 0.0
    last_downtime_s: float | None = None


@dataclass
class Stack:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: list[embedded.ServerProcess] = field(default_factory=list)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    api_count: int = 1
    gateway_count: int = 1
    nginx_port: int | None = nginx.DEFAULT_PORT  # None: no nginx even when it is installed
    expected_clients: int = nginx.DEFAULT_EXPECTED_CLIENTS  # WebSocket clients nginx's workers are sized for
    specs: dict[str, Child] = field(default_factory=dict)
    nginx_skipped: str = ""
    restarts: int = 0  # rolling restarts done (`dms restart` waits for this to change)
    settle_s: float = 0.0  # pause after each restarted process, so nginx takes it back first
    health: dict[str, Health] = field(default_factory=dict)
    crash_rule: tuple[int, float] = field(default_factory=crash_limit)
    tls: bool = False  # `dms up --tls`: a self-signed pair under .dms/tls when TLS_CERT_FILE is not set
    _site: nginx.Site | None = None

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
        # Written whole and renamed: `dms status` and `dms restart` never read half a file.
        partial = self.state_file.with_name(f".state.{os.getpid()}.json")
        partial.write_text(json.dumps(state))
        partial.replace(self.state_file)

    # -- infrastructure ------------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.environ.get("DATABASE_URL"):
            self.env["DATABASE_URL"] = os.environ["DATABASE_URL"]
            logger.info("using DATABASE_URL from the environment")
        else:
            self.env["DATABASE_URL"] = self._embedded_postgres()
        if os.environ.get("REDIS_CLUSTER_NODES"):
            # A Redis Cluster: no embedded Redis. Every process reads REDIS_CLUSTER_NODES first;
            # REDIS_URL names one seed, for .dms/env readers that expect it (contract section 1).
            nodes = os.environ["REDIS_CLUSTER_NODES"]
            self.env["REDIS_CLUSTER_NODES"] = nodes
            self.env["REDIS_URL"] = os.environ.get("REDIS_URL") or f"redis://{nodes.split(',')[0].strip()}/0"
            logger.info("using the Redis Cluster of REDIS_CLUSTER_NODES ({})", nodes)
        elif os.environ.get("REDIS_URL"):
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
            started = time.monotonic()
            server = _on_a_free_port(state.get("pg_port", DEFAULT_PG_PORT),
                                     lambda port: embedded.start_postgres(data_dir, port=port, durable=True))
            port = server.port
            self._add_server(server)
            self._save_state(pg_port=port)
            logger.info("PostgreSQL up on port {} in {:.1f}s", port, time.monotonic() - started)
        return embedded.create_database(port, "dms")

    def _embedded_redis(self) -> str:
        state = self._state()
        port = state.get("redis_port", DEFAULT_REDIS_PORT)
        pid = state.get("redis_pid")
        if pid and not embedded.port_is_free(port) and embedded.pid_alive(pid):
            logger.info("reusing Redis (pid {}) on port {}", pid, port)
        else:
            server = _on_a_free_port(port, lambda port: embedded.start_redis(self.home / "redis", port=port,
                                                                              persist=True))
            port = server.port
            self._add_server(server)
            self._save_state(redis_port=port, redis_pid=server.pid)
            logger.info("Redis up on port {}", port)
        return f"redis://127.0.0.1:{port}/0"

    def _add_server(self, server: embedded.ServerProcess) -> None:
        self.servers.append(server)
        self.health[server.name] = Health()

    # -- application ---------------------------------------------------------------------------
    def prepare_database(self) -> None:
        applied = migrate(self.env["DATABASE_URL"])
        logger.info("migrations: {} applied", len(applied))
        counts = seed_demo(self.env["DATABASE_URL"])
        logger.info("demo data present: {}", counts)

    def ports(self) -> tuple[list[int], list[int]]:
        return spread_ports(int(self.env["API_PORT"]), int(self.env["GATEWAY_PORT"]),
                            apis=self.api_count, gateways=self.gateway_count)

    def write_env_file(self) -> Path:
        base = {
            "JWT_SECRET": os.environ.get("JWT_SECRET", DEV_JWT_SECRET),
            "API_HOST": os.environ.get("API_HOST", "127.0.0.1"),
            "API_PORT": os.environ.get("API_PORT", "8000"),
            "GATEWAY_HOST": os.environ.get("GATEWAY_HOST", "127.0.0.1"),
            "GATEWAY_PORT": os.environ.get("GATEWAY_PORT", "8001"),
        }
        self.env.update(base)
        _, gateway_ports = self.ports()
        self.env["API_URL"] = f"http://{base['API_HOST']}:{base['API_PORT']}"
        # GATEWAY_PORT is where numbering starts; with several APIs the first gateway sits after them.
        self.env["GATEWAY_URL"] = f"ws://{base['GATEWAY_HOST']}:{gateway_ports[0]}/ws"
        # Handy for the README walk-through; not read by any process.
        if self._use_nginx():
            secure = self._tls_files()
            self.env["NGINX_URL"] = f"{'https' if secure else 'http'}://127.0.0.1:{self.nginx_port}"
            self.env["GATEWAY_URL"] = f"{'wss' if secure else 'ws'}://127.0.0.1:{self.nginx_port}/ws"
            # Behind nginx the API believes X-Forwarded-For from nginx only (loopback here).
            self.env["TRUSTED_PROXIES"] = os.environ.get("TRUSTED_PROXIES", "127.0.0.1")
        # What /board and /admin open: a gateway (nginx's when it runs), never GATEWAY_PORT blindly.
        self.env["PUBLIC_GATEWAY_URL"] = os.environ.get("PUBLIC_GATEWAY_URL") or self.env["GATEWAY_URL"]
        self.env["DEMO_RESTAURANT_ID"] = DEMO.restaurant
        self.env["DEMO_PRODUCT_ID"] = demo_id("product:1")
        path = self.home / "env"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.env.items()))
        return path

    def _tls_files(self) -> tuple[str, str] | None:
        """nginx's certificate and key: TLS_CERT_FILE/TLS_KEY_FILE, else with --tls a self-signed pair."""
        cert, key = os.environ.get("TLS_CERT_FILE", ""), os.environ.get("TLS_KEY_FILE", "")
        if cert or key:
            if not (cert and key):
                raise StackError("TLS_CERT_FILE and TLS_KEY_FILE go together")
            return cert, key
        if not self.tls:
            return None
        files = tls.self_signed(self.home / "tls")
        self.env["TLS_CA_FILE"] = str(files.ca_file)  # what clients of this stack trust
        return str(files.cert_file), str(files.key_file)

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
        api_ports, gateway_ports = self.ports()
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
            self.health[spec.name] = Health()
        for spec in self.specs.values():
            self._wait_http(spec.ready_url, spec.name, timeout_s)
        if self._use_nginx():
            assert self.nginx_port is not None
            cert, key = self._tls_files() or ("", "")
            self._site = nginx.fleet_site(expected_clients=self.expected_clients, api_ports=tuple(api_ports),
                                          gateway_ports=tuple(gateway_ports), listen_port=self.nginx_port,
                                          upstream_host=host, tls_cert_file=cert, tls_key_file=key)
            logger.info("nginx sized for {} WebSocket clients: {} worker(s) x {} connections, {} descriptors each",
                        self.expected_clients, self._site.worker_processes, self._site.worker_connections,
                        self._site.worker_rlimit_nofile)
            server = nginx.start(self._site, self.home / "nginx")
            assert server.process is not None
            self.children.append(("nginx", server.process))
            self.health["nginx"] = Health()
            self.settle_s = self._site.fail_timeout_s
        self._write_children_state()

    def _spawn(self, spec: Child) -> subprocess.Popen[bytes]:
        module = spec.name.split("-")[0]
        return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **self.env, **spec.env},
                                stdin=subprocess.DEVNULL)

    def _child(self, name: str) -> subprocess.Popen[bytes]:
        return next(process for child, process in self.children if child == name)

    def _replace_child(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.children = [(child, process if child == name else old) for child, old in self.children]

    def _write_children_state(self) -> None:
        """What `dms restart`, `dms status` and operators read: every pid, port and restart count."""
        ports = {name: spec.port for name, spec in self.specs.items()}
        if self.nginx_port is not None:
            ports["nginx"] = self.nginx_port

        def entry(name: str, pid: int, port: int | None) -> dict[str, Any]:
            health = self.health.get(name, Health())
            return {"name": name, "pid": pid, "port": port, "state": health.state, "restarts": health.restarts,
                    "last_exit": health.last_exit, "last_downtime_s": health.last_downtime_s}

        self._save_state(
            dms_pid=os.getpid(),
            restarts=self.restarts,
            crash_limit=list(self.crash_rule),
            children=[entry(name, process.pid, ports.get(name)) for name, process in self.children],
            servers=[entry(server.name, server.pid, server.port) for server in self.servers],
        )

    def rolling_restart(self, *, should_continue: Callable[[], bool] = lambda: True,
                        timeout_s: float = 60.0) -> None:
        """Restart APIs and gateways one at a time: SIGTERM (APIs finish their requests, gateways
        drain), wait for the exit, start it again, wait until it is ready, then the next one.
        nginx stays up and sends traffic to the others meanwhile."""
        for name, process in list(self.children):
            spec = self.specs.get(name)
            if spec is None or not should_continue():
                continue
            started = time.monotonic()
            _stop_child(name, process, timeout_s=30)
            self._replace_child(name, self._spawn(spec))
            self._wait_http(spec.ready_url, name, timeout_s, only=name)
            self.health[name].state = "up"
            logger.info("restarted {} in {:.1f}s", name, time.monotonic() - started)
            time.sleep(self.settle_s)
        self.restarts += 1
        self._write_children_state()

    def _wait_http(self, url: str, name: str, timeout_s: float, *, only: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child_name, process in self.children:
                if (only is None or child_name == only) and process.poll() is not None:
                    raise StackError(f"{child_name} exited with code {process.returncode} during start-up")
            if _http_ok(url, timeout_s=2):
                return
            time.sleep(0.1)
        raise StackError(f"{name} was not ready at {url} within {timeout_s:.0f}s")

    # -- supervision ---------------------------------------------------------------------------
    def supervise(self, *, stopping: Callable[[], bool] = lambda: False) -> None:
        """One look at every process we started: note unexpected exits, restart after a backoff,
        mark restarted ones up when they answer. Raises StackError on a crash loop."""
        for name, process in list(self.children):
            self._watch(name, process.poll(), stopping)
        for server in list(self.servers):
            if server.started_here:
                self._watch(server.name, None if server.alive() else _exit_code(server), stopping)

    def _watch(self, name: str, code: int | None, stopping: Callable[[], bool]) -> None:
        health = self.health.setdefault(name, Health())
        now = time.monotonic()
        if code is not None and health.state in ("up", "starting"):
            if not stopping():  # else Ctrl-C reached the children first; the stack is going down anyway
                self._crashed(name, code)
        elif health.state == "waiting" and now >= health.restart_at and not stopping():
            try:
                self._restart(name)
            except (embedded.EmbeddedError, nginx.NginxError, OSError) as exc:
                logger.error("{} did not start again: {}", name, exc)
                self._crashed(name, -1)
                return
            health.state = "starting"
            if name not in self.specs:  # servers and nginx: started and waited for in one go
                self._mark_up(name)
            else:
                self._write_children_state()  # its new pid, for `dms status`
        elif health.state == "starting" and code is None and name in self.specs:
            if _http_ok(self.specs[name].ready_url, timeout_s=0.5):
                self._mark_up(name)
            elif now - health.restart_at > START_TIMEOUT_S:
                logger.error("{} was not ready {:.0f}s after its restart; killing it", name, START_TIMEOUT_S)
                process = self._child(name)
                process.kill()
                process.wait(timeout=10)
                self._crashed(name, process.returncode)

    def _crashed(self, name: str, code: int) -> None:
        """Count an unexpected exit; schedule a restart after a backoff, or stop on a crash loop."""
        health = self.health[name]
        now = time.monotonic()
        count, window = self.crash_rule
        health.crashes = [t for t in health.crashes if now - t < window] + [now]
        health.last_exit = code
        if health.state == "up":
            health.down_since = now
        if len(health.crashes) >= count:
            raise StackError(f"{name} exited unexpectedly {len(health.crashes)} times within {window:.0f}s "
                             f"(last exit code {code}); stopping the stack")
        delay = backoff_s(len(health.crashes))
        health.state, health.restart_at = "waiting", now + delay
        logger.error("{} exited unexpectedly with code {} (exit {} of {} allowed within {:.0f}s); restarting "
                     "in {:.1f}s", name, code, len(health.crashes), count - 1, window, delay)
        self._write_children_state()

    def _mark_up(self, name: str) -> None:
        health = self.health[name]
        health.state = "up"
        health.restarts += 1
        health.last_downtime_s = round(time.monotonic() - health.down_since, 2)
        logger.info("{} is back after {:.1f}s (restart {} after a crash)", name, health.last_downtime_s,
                    health.restarts)
        self._write_children_state()

    def _restart(self, name: str) -> None:
        """Start a crashed process again, on the same port and with the same data."""
        if name in self.specs:
            self._replace_child(name, self._spawn(self.specs[name]))
        elif name == "nginx":
            assert self._site is not None
            _kill_group(self._child("nginx").pid)  # orphaned workers would keep the port
            server = nginx.start(self._site, self.home / "nginx")
            assert server.process is not None
            self._replace_child("nginx", server.process)
        else:
            old = next(server for server in self.servers if server.name == name)
            _kill_group(old.pid)  # backends of a killed postmaster still hold its shared memory
            if name == "postgres":
                new = embedded.start_postgres(self.home / "postgres" / "data", port=old.port, durable=True)
            else:
                new = embedded.start_redis(self.home / "redis", port=old.port, persist=True)
                self._save_state(redis_pid=new.pid)
            self.servers = [new if server is old else server for server in self.servers]
        logger.info("{} started again", name)

    # -- summary -------------------------------------------------------------------------------
    def banner(self) -> str:
        secret = self.env["JWT_SECRET"]
        tokens = {
            "admin": mint_token(secret, role="admin", sub=DEMO.admin),
            "restaurant": mint_token(secret, role="restaurant", sub=DEMO.restaurant_user,
                                     restaurant_id=DEMO.restaurant),
            "driver": mint_token(secret, role="driver", sub=DEMO.driver),
            "demo": mint_token(secret, role="demo", sub=DEMO.demo_user, restaurant_id=DEMO.restaurant),
        }
        count, window = self.crash_rule
        pages = self.env.get("NGINX_URL") or self.env["API_URL"]  # the pages' origin, as browsers reach it
        lines = [
            "",
            "dms is up",
            f"  live board  {pages}/board#token={tokens['restaurant']}",
            f"  admin       {pages}/admin#token={tokens['admin']}",
            f"  REST API    {self.env['API_URL']}   (ready: {self.env['API_URL']}/ready)",
            f"  WebSocket   {self.env['GATEWAY_URL']}?token=<token>",
            *self._topology_lines(),
            f"  settings    {self.home / 'env'}",
            f"  demo restaurant id  {DEMO.restaurant}",
            "  demo tokens (valid 24 h):",
            *[f"    {role:<10} {token}" for role, token in tokens.items()],
            f"  A process that dies is restarted ({count} exits within {window:.0f}s stop the stack); "
            "see `dms status`.",
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


def _http_ok(url: str, *, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _exit_code(server: embedded.ServerProcess) -> int:
    if server.process is not None and server.process.returncode is not None:
        return server.process.returncode
    return -1


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group we started in its own session, and wait for it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count: they hold no port or memory)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


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
