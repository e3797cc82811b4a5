"""`dms up` with REDIS_CLUSTER_NODES: no embedded Redis, the cluster's seeds passed on to every process."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import Config, ConfigError
from devstack.stack import Stack


def test_a_cluster_starts_no_embedded_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/dms")
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "127.0.0.1:7001, 127.0.0.1:7002")
    monkeypatch.delenv("REDIS_URL", raising=False)
    stack = Stack(home=tmp_path / ".dms")
    stack.start_infrastructure()
    assert stack.servers == []
    assert stack.env["REDIS_CLUSTER_NODES"] == "127.0.0.1:7001, 127.0.0.1:7002"
    assert stack.env["REDIS_URL"] == "redis://127.0.0.1:7001/0"  # one seed, for readers of .dms/env


def test_the_cluster_setting_is_read_and_checked() -> None:
    base = {"DATABASE_URL": "postgresql://127.0.0.1/dms"}
    config = Config.from_env({**base, "REDIS_CLUSTER_NODES": "10.0.0.1:7000,10.0.0.2:7000"})
    assert config.redis_cluster_nodes == ("10.0.0.1:7000", "10.0.0.2:7000") and config.redis_url == ""
    assert Config.from_env({**base, "REDIS_URL": "redis://127.0.0.1:6379/0"}).redis_cluster_nodes == ()
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        Config.from_env({**base, "REDIS_CLUSTER_NODES": "10.0.0.1"})
    with pytest.raises(ConfigError, match="REDIS_URL: required"):
        Config.from_env(base)
