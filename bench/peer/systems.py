"""Starting the systems under test, each fresh server processes on a free loopback port."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, Stack, log, python_module, spawn, stop, wait_http
from devstack.embedded import free_port

SYSTEMS = ("dms", "flask-socketio", "node-socketio")
# Ours as `dms up` runs it: the relay inside the gateway process (RELAY_IN_GATEWAY, the default),
# so the process measured carries the relay's work too. Not in the default set; name it in --systems.
DMS_RELAY_INSIDE = "dms-relay-inside"
# Two gateway processes sharing one port with SO_REUSEPORT (GATEWAY_REUSE_PORT), the relay its own
# process as for `dms`; CPU and memory are the sum over both. Not in the default set either.
DMS_TWO = "dms-2"
DMS_TWO_PROCESSES = 2
EXTRA = (DMS_RELAY_INSIDE, DMS_TWO)
OURS = ("dms", *EXTRA)
SEPARATE_RELAY = ("dms", DMS_TWO)  # ours with the relay as a process of its own
NODE_DIR = ROOT / "bench" / "peer"
NODE_WORK = ROOT / "bench" / "reports" / "node-peer"  # scratch: npm installs the pinned packages here
NPM_TIMEOUT_S = 300


@dataclass
class Running:
    """A started system: the server processes whose CPU and memory are measured (summed), and the URL clients dial."""

    system: str
    kind: str  # the client dialect: `dms` or `socketio`
    url: str
    servers: list[subprocess.Popen[bytes]]
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway_ids: list[str] = field(default_factory=list)  # ours on a shared port: whose share to report

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.servers]

    def stop(self) -> None:
        for proc in [*self.helpers, *self.servers]:
            stop(proc, timeout_s=10)


def node_available() -> str | None:
    """None when node and npm are on PATH, else the one-line reason the Node peer is skipped."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found on PATH" if missing else None


def install_node_peer() -> Path:
    """`npm install` the pinned socket.io packages into the scratch folder, once per package.json."""
    NODE_WORK.mkdir(parents=True, exist_ok=True)
    manifest, installed = NODE_DIR / "package.json", NODE_WORK / "package.json"
    modules = NODE_WORK / "node_modules"
    if modules.is_dir() and installed.exists() and filecmp.cmp(manifest, installed, shallow=False):
        return modules
    shutil.copyfile(manifest, installed)
    log(f"installing the Node peer's pinned packages into {NODE_WORK.relative_to(ROOT)} ...")
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_WORK,
                          capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    if done.returncode != 0:
        installed.unlink(missing_ok=True)
        raise RuntimeError(f"npm install failed: {done.stderr.strip()[-400:]}")
    return modules


def start(system: str, stack: Stack, *, feeder: bool) -> Running:
    """A fresh server; for the peers with `feeder`, their outbox feeder too (ours uses its relay)."""
    port = free_port()
    logs = stack.tmp
    if system == DMS_TWO:
        ids = [f"bench-gw-{n + 1}" for n in range(DMS_TWO_PROCESSES)]
        return Running(system, "dms", f"ws://127.0.0.1:{port}/ws", start_shared_gateways(stack, port, ids),
                       gateway_ids=ids)
    if system in OURS:
        # `dms`: the relay runs as its own process (RELAY_IN_GATEWAY=false), like the peers' feeders,
        # so the gateway process measured is the fan-out alone. `dms-relay-inside`: as `dms up` runs it.
        inside = "true" if system == DMS_RELAY_INSIDE else "false"
        env = stack.env(GATEWAY_PORT=str(port), GATEWAY_ID="bench-gw", WS_PING_INTERVAL="60",
                        WS_MAX_SUBSCRIPTIONS="50", RELAY_IN_GATEWAY=inside)
        server = python_module("gateway", env=env, log=logs / "gateway.log")
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        return Running(system, "dms", f"ws://127.0.0.1:{port}/ws", [server])
    env = stack.env(PEER_PORT=str(port), PEER_SYSTEM=system)
    if system == "flask-socketio":
        server = python_module("bench.peer.socketio_server", env=env, log=logs / "flask-socketio.log")
    elif system == "node-socketio":
        modules = install_node_peer()
        server = spawn(["node", str(NODE_DIR / "node_server.js")], env={**env, "NODE_PATH": str(modules)},
                       log=logs / "node-socketio.log")
    else:
        raise ValueError(f"unknown system {system!r}")
    wait_http(f"http://127.0.0.1:{port}/health", proc=server)
    running = Running(system, "socketio", f"ws://127.0.0.1:{port}/socket.io/", [server])
    if feeder:
        running.helpers.append(python_module("bench.peer.feeder", env=env, log=logs / f"{system}-feeder.log"))
    return running


def start_shared_gateways(stack: Stack, port: int, ids: list[str]) -> list[subprocess.Popen[bytes]]:
    """`dms-2`: gateway processes on one port (GATEWAY_REUSE_PORT), each its own GATEWAY_ID, no relay inside."""
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for gateway_id in ids:
            env = stack.env(GATEWAY_PORT=str(port), GATEWAY_ID=gateway_id, GATEWAY_REUSE_PORT="true",
                            WS_PING_INTERVAL="60", WS_MAX_SUBSCRIPTIONS="50", RELAY_IN_GATEWAY="false")
            servers.append(python_module("gateway", env=env, log=stack.tmp / f"{gateway_id}.log"))
        wait_health_ids(f"http://127.0.0.1:{port}/health", set(ids), procs=servers)
    except BaseException:
        for proc in servers:
            stop(proc, timeout_s=10)
        raise
    return servers


def wait_health_ids(url: str, ids: set[str], *, procs: list[subprocess.Popen[bytes]],
                    timeout_s: float = 60.0) -> None:
    """Until /health on a shared port has answered from every id: each request is a new connection,
    which the kernel hashes to one of the processes, so every process is met within a few tries."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a gateway for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
                if response.status == 200:
                    seen.add(json.loads(response.read())["id"])
        except OSError:
            pass
        if seen >= ids:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url}: not every gateway answered within {timeout_s:.0f}s (missing {sorted(ids - seen)})")


def connection_split(redis_url: str, ids: list[str], expected: int, *, timeout_s: float = 6.0) -> dict[str, int]:
    """Connections per gateway id from the stats each gateway writes to Redis (every 2 s), once they
    add up to `expected` or at the deadline: how evenly the kernel spread them."""
    import redis

    from common.gateway_stats import read_all

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            by_id = {i["id"]: int(i["connections"]) for i in read_all(client)["instances"]}
            split = {gateway_id: by_id.get(gateway_id, 0) for gateway_id in ids}
            if sum(split.values()) >= expected or time.monotonic() > deadline:
                return split
            time.sleep(0.25)
    finally:
        client.close()


def start_relay(stack: Stack) -> subprocess.Popen[bytes]:
    return python_module("relay", env={**stack.env(), "RELAY_PORT": str(free_port())}, log=stack.tmp / "relay.log")


def start_api(stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = python_module("api", env=stack.env(API_PORT=str(port)), log=stack.tmp / "api.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", proc=proc)
    return proc, base
