"""Topology fixtures: API processes, nginx in front of them, and a client that follows a channel."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import embedded, nginx
from tests.fix_infra import Infra
from tests.helpers import Process
from tests.topology.support import FAST_LIMITS


@pytest.fixture
def start_api(infra: Infra, tmp_path: Path) -> Iterator[Callable[..., tuple[Process, str]]]:
    """Start `python -m api` processes with their own settings; all are stopped after the test."""
    started: list[Process] = []

    def start(*, name: str = "api", **settings: str) -> tuple[Process, str]:
        port = embedded.free_port()
        env = infra.env(API_PORT=str(port), TRUSTED_PROXIES="127.0.0.1", **{**FAST_LIMITS, **settings})
        process = Process("api", env, tmp_path / f"{name}-{port}.log")
        started.append(process)
        process.wait_http_ok(f"http://127.0.0.1:{port}/ready")
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.stop(timeout_s=15)


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[..., tuple[embedded.ServerProcess, str]]]:
    """nginx in a prefix under the test's temporary directory, on a free port."""
    started: list[embedded.ServerProcess] = []

    def start(api_ports: list[int], gateway_ports: list[int]) -> tuple[embedded.ServerProcess, str]:
        site = nginx.Site(api_ports=tuple(api_ports), gateway_ports=tuple(gateway_ports),
                          listen_port=embedded.free_port())
        server = nginx.start(site, tmp_path / "nginx")
        started.append(server)
        return server, f"127.0.0.1:{site.listen_port}"

    yield start
    for server in started:
        server.stop(sig=signal.SIGTERM, timeout_s=10)
