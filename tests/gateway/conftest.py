"""A private PostgreSQL + Redis per test, for tests that restart or kill infrastructure."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.migrations import migrate
from devstack import embedded
from tests.conftest import JWT_SECRET


@dataclass
class PrivateInfra:
    tmp: Path
    postgres: embedded.ServerProcess
    redis: embedded.ServerProcess
    database_url: str

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def env(self, **extra: str) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "JWT_SECRET": JWT_SECRET,
                "DMS_ENV": "test", **extra}

    def restart_redis(self, *, between: object = None) -> None:
        port = self.redis.port
        self.redis.stop(sig=signal.SIGTERM)
        if callable(between):
            between()
        self.redis = embedded.start_redis(self.tmp / "redis", port=port, persist=False)

    def restart_postgres(self, *, between: object = None) -> None:
        port = self.postgres.port
        self.postgres.stop()
        if callable(between):
            between()
        self.postgres = embedded.start_postgres(self.tmp / "pg" / "data", port=port, durable=False)


@pytest.fixture
def private_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateInfra]:
    tmp = tmp_path_factory.mktemp("private")
    postgres = embedded.start_postgres(tmp / "pg" / "data", port=embedded.free_port(), durable=False)
    redis_server = embedded.start_redis(tmp / "redis", port=embedded.free_port(), persist=False)
    url = embedded.create_database(postgres.port, "dms")
    migrate(url)
    infra = PrivateInfra(tmp, postgres, redis_server, url)
    try:
        yield infra
    finally:
        infra.redis.stop(sig=signal.SIGTERM)
        infra.postgres.stop()
        shutil.rmtree(embedded.resolve_data_dir(tmp / "pg" / "data").parent, ignore_errors=True)
