"""Fixtures of real PostgreSQL and Redis: one per session (`infra`), or one per test (`private_infra`).

Loaded as a plugin by tests/conftest.py; test modules import `Infra` and `JWT_SECRET` from here,
never from a conftest.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import Config
from common.migrations import migrate
from devstack import embedded

JWT_SECRET = "test-secret-0123456789abcdef0123"


@dataclass
class Infra:
    """An embedded PostgreSQL (migrated database) and Redis in `tmp`, on free ports."""

    tmp: Path
    postgres: embedded.ServerProcess
    redis: embedded.ServerProcess
    database_url: str

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an API or gateway process using these servers."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "JWT_SECRET": JWT_SECRET,
            "DMS_ENV": "test",
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def restart_redis(self, *, between: Callable[[], object] | None = None) -> None:
        """Stop Redis and start it again on the same port (its data is not persisted)."""
        port = self.redis.port
        self.redis.stop(sig=signal.SIGTERM)
        if between is not None:
            between()
        self.redis = embedded.start_redis(self.tmp / "redis", port=port, persist=False)

    def restart_postgres(self, *, between: Callable[[], object] | None = None) -> None:
        port = self.postgres.port
        self.postgres.stop()
        if between is not None:
            between()
        self.postgres = embedded.start_postgres(self.tmp / "pg" / "data", port=port, durable=False)

    def stop(self) -> None:
        self.redis.stop(sig=signal.SIGTERM)
        self.postgres.stop()
        shutil.rmtree(embedded.resolve_data_dir(self.tmp / "pg" / "data").parent, ignore_errors=True)


def start_infra(tmp: Path, *, database: str) -> Infra:
    """Start both servers in `tmp` and create and migrate `database`."""
    postgres = embedded.start_postgres(tmp / "pg" / "data", port=embedded.free_port(), durable=False)
    redis_server = embedded.start_redis(tmp / "redis", port=embedded.free_port(), persist=False)
    infra = Infra(tmp, postgres, redis_server, "")
    try:
        infra.database_url = embedded.create_database(postgres.port, database)
        migrate(infra.database_url)
    except BaseException:
        infra.stop()
        raise
    return infra


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    tmp = tmp_path_factory.mktemp("infra")
    try:
        shared = start_infra(tmp, database="dms_test")
    except embedded.EmbeddedError as exc:  # e.g. a private checkout as root: one sentence, not 400 errors
        pytest.exit(f"cannot start the embedded PostgreSQL: {exc}", returncode=3)
    try:
        yield shared
    finally:
        shared.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def private_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Servers of this test alone, for tests that restart or kill infrastructure."""
    private = start_infra(tmp_path_factory.mktemp("private"), database="dms")
    try:
        yield private
    finally:
        private.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this test alone (its URL), for tests that count the commands Redis received:
    the session's shared Redis also serves the shared gateway's background work."""
    server = embedded.start_redis(tmp_path_factory.mktemp("own-redis"), port=embedded.free_port(), persist=False)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop(sig=signal.SIGTERM)


@pytest.fixture(scope="session")
def config(infra: Infra) -> Config:
    # Every test client comes from 127.0.0.1; the rate-limit tests build apps with small limits.
    return Config.from_env(infra.env(RATE_LIMIT_IP="1000000/minute", RATE_LIMIT_USER="1000000/hour"))
