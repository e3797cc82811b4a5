"""Starting the three systems under test, each a fresh server process on a free loopback port."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, Stack, log, python_module, spawn, stop, wait_http
from devstack.embedded import free_port

SYSTEMS = ("dms", "flask-socketio", "node-socketio")
# Ours as `dms up` runs it: the relay inside the gateway process (RELAY_IN_GATEWAY, the default),
# so the process measured carries the relay's work too. Not in the default set; name it in --systems.
DMS_RELAY_INSIDE = "dms-relay-inside"
OURS = ("dms", DMS_RELAY_INSIDE)
NODE_DIR = ROOT / "bench" / "peer"
NODE_WORK = ROOT / "bench" / "reports" / "node-peer"  # scratch: npm installs the pinned packages here
NPM_TIMEOUT_S = 300


@dataclass
class Running:
    """A started server: the process whose CPU and memory are measured, and the URL clients dial."""

    system: str
    kind: str  # the client dialect: `dms` or `socketio`
    url: str
    server: subprocess.Popen[bytes]
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in [*self.helpers, self.server]:
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
    if system in OURS:
        # `dms`: the relay runs as its own process (RELAY_IN_GATEWAY=false), like the peers' feeders,
        # so the gateway process measured is the fan-out alone. `dms-relay-inside`: as `dms up` runs it.
        inside = "true" if system == DMS_RELAY_INSIDE else "false"
        env = stack.env(GATEWAY_PORT=str(port), GATEWAY_ID="bench-gw", WS_PING_INTERVAL="60",
                        WS_MAX_SUBSCRIPTIONS="50", RELAY_IN_GATEWAY=inside)
        server = python_module("gateway", env=env, log=logs / "gateway.log")
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        return Running(system, "dms", f"ws://127.0.0.1:{port}/ws", server)
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
    running = Running(system, "socketio", f"ws://127.0.0.1:{port}/socket.io/", server)
    if feeder:
        running.helpers.append(python_module("bench.peer.feeder", env=env, log=logs / f"{system}-feeder.log"))
    return running


def start_relay(stack: Stack) -> subprocess.Popen[bytes]:
    return python_module("relay", env={**stack.env(), "RELAY_PORT": str(free_port())}, log=stack.tmp / "relay.log")


def start_api(stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = python_module("api", env=stack.env(API_PORT=str(port)), log=stack.tmp / "api.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", proc=proc)
    return proc, base
