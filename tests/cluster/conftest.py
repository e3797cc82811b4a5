"""The realtime stack on a Redis Cluster: one cluster, PostgreSQL, API app and gateway for the package.

The fixtures `infra`, `config`, `api_app` and `gateway` stand in for the session's single-node ones
(tests/fix_infra.py, tests/fix_servers.py) inside this package, so contract tests written for one
Redis run here unchanged against the cluster.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from api.app import create_app
from common.config import Config
from devstack import embedded
from tests.cluster.support import ClusterInfra, LocalCluster, start_cluster
from tests.fix_infra import start_infra
from tests.fix_servers import SharedGateway
from tests.helpers import Process


@pytest.fixture(scope="package")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("redis-cluster")
    cluster = start_cluster(tmp)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="package")
def infra(redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfra]:
    tmp = tmp_path_factory.mktemp("cluster-infra")
    base = start_infra(tmp, database="dms_cluster")
    own = ClusterInfra(base.tmp, base.postgres, base.redis, base.database_url, cluster=redis_cluster)
    try:
        yield own
    finally:
        own.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="package")
def config(infra: ClusterInfra) -> Config:
    return Config.from_env(infra.env(RATE_LIMIT_IP="1000000/minute", RATE_LIMIT_USER="1000000/hour"))


@pytest.fixture(scope="package")
def api_app(config: Config) -> Iterator[Any]:
    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.extensions["dms"].close()


@pytest.fixture(scope="package")
def gateway(infra: ClusterInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    """One gateway (with its relay) on the cluster, shared by the package; named as the session's is."""
    port = embedded.free_port()
    log = tmp_path_factory.mktemp("cluster-gateway") / "gateway.log"
    env = infra.env(GATEWAY_PORT=str(port), GATEWAY_ID="gw-test", WS_PING_INTERVAL="30",
                    ALLOWED_ORIGINS=f"http://127.0.0.1:{port},http://allowed.example")
    process = Process("gateway", env, log)
    process.wait_http_ok(f"http://127.0.0.1:{port}/health")
    yield {"url": f"ws://127.0.0.1:{port}/ws", "http": f"http://127.0.0.1:{port}", "log": str(log)}
    process.stop()
