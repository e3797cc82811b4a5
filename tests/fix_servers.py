"""The API app and its test client, and real gateway processes (shared, or started per test).

Loaded as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest

from api.app import create_app
from common.config import Config
from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import Process


class SharedGateway(TypedDict):
    """The session's gateway: its WebSocket URL, its HTTP base URL and its log file."""

    url: str
    http: str
    log: str


class StartedGateway(TypedDict):
    """A gateway started by one test: WebSocket URL, HTTP base URL and its GATEWAY_ID."""

    url: str
    http: str
    id: str


@pytest.fixture(scope="session")
def api_app(config: Config) -> Iterator[Any]:
    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.extensions["dms"].close()


@pytest.fixture
def client(api_app: Any) -> Any:
    return api_app.test_client()


@pytest.fixture(scope="session")
def gateway(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    """One real gateway process (gevent.pywsgi, its own WebSocket transport, relay) shared by the session."""
    port = embedded.free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = infra.env(GATEWAY_PORT=str(port), GATEWAY_ID="gw-test", WS_PING_INTERVAL="30",
                    WS_MAX_CONNECTIONS_PER_USER="10",
                    ALLOWED_ORIGINS=f"http://127.0.0.1:{port},http://allowed.example")
    process = Process("gateway", env, log)
    process.wait_http_ok(f"http://127.0.0.1:{port}/health")
    yield {"url": f"ws://127.0.0.1:{port}/ws", "http": f"http://127.0.0.1:{port}", "log": str(log)}
    process.stop()


@pytest.fixture
def start_gateway(infra: Infra, tmp_path: Path) -> Iterator[Any]:
    """Start extra gateway processes with their own settings; all are stopped after the test."""
    started: list[Process] = []

    def start(*, name: str = "gw", wait: bool = True, base: dict[str, str] | None = None, port: int | None = None,
              **settings: str) -> tuple[Process, StartedGateway]:
        port = port or embedded.free_port()  # a given port: gateways sharing one (GATEWAY_REUSE_PORT)
        env = {**(base if base is not None else infra.env()), "GATEWAY_PORT": str(port),
               "GATEWAY_ID": f"{name}-{port}", **settings}
        process = Process("gateway", env, tmp_path / f"{name}-{port}.log")
        started.append(process)
        if wait:
            process.wait_http_ok(f"http://127.0.0.1:{port}/health")
        return process, {"url": f"ws://127.0.0.1:{port}/ws", "http": f"http://127.0.0.1:{port}",
                         "id": f"{name}-{port}"}

    yield start
    for process in started:
        process.stop(sig=signal.SIGKILL if process.proc.poll() is None else signal.SIGTERM, timeout_s=10)
