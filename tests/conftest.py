"""Session fixtures: real embedded PostgreSQL and Redis on free ports in a temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.auth import mint_token
from common.config import Config
from common.migrations import migrate
from devstack import embedded
from tests.helpers import Process

JWT_SECRET = "test-secret-0123456789abcdef0123"
REQUIRE_ALL = os.environ.get("DMS_REQUIRE_ALL") == "1"


@dataclass
class Infra:
    database_url: str
    redis_url: str
    postgres: embedded.ServerProcess
    redis: embedded.ServerProcess
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "JWT_SECRET": JWT_SECRET,
            "DMS_ENV": "test",
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port (its data is not persisted)."""
        port = self.redis.port
        self.redis.stop(sig=signal.SIGTERM)
        self.redis = embedded.start_redis(self.tmp / "redis", port=port, persist=False)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    tmp = tmp_path_factory.mktemp("infra")
    try:
        postgres = embedded.start_postgres(tmp / "pg" / "data", port=embedded.free_port(), durable=False)
    except embedded.EmbeddedError as exc:  # e.g. a private checkout as root: one sentence, not 400 errors
        pytest.exit(f"cannot start the embedded PostgreSQL: {exc}", returncode=3)
    redis_server = embedded.start_redis(tmp / "redis", port=embedded.free_port(), persist=False)
    try:
        url = embedded.create_database(postgres.port, "dms_test")
        migrate(url)
        yield Infra(url, f"redis://127.0.0.1:{redis_server.port}/0", postgres, redis_server, tmp)
    finally:
        redis_server.stop(sig=signal.SIGTERM)
        postgres.stop()
        shutil.rmtree(embedded.resolve_data_dir(tmp / "pg" / "data").parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def config(infra: Infra) -> Config:
    # Every test client comes from 127.0.0.1; the rate-limit tests build apps with small limits.
    return Config.from_env(infra.env(RATE_LIMIT_IP="1000000/minute", RATE_LIMIT_USER="1000000/hour"))


@dataclass
class World:
    """A fresh restaurant with users of every role and a few products, unique to one test."""

    restaurant_id: str
    other_restaurant_id: str
    admin: str
    restaurant: str
    driver: str
    driver_id: str
    demo: str
    other_restaurant: str
    products: list[dict[str, Any]]

    @staticmethod
    def token(role: str, **kwargs: Any) -> str:
        """A token for a new identity of `role` (restaurant and demo roles need restaurant_id)."""
        return mint_token(JWT_SECRET, role=role, **kwargs)


@pytest.fixture
def world(infra: Infra) -> World:
    from common.db import connect

    restaurant_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    driver_id = str(uuid.uuid4())
    products = []
    with connect(infra.database_url) as conn:
        for rid in (restaurant_id, other_id):
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (rid, f"R {rid[:8]}"))
        for n in range(3):
            row = conn.execute(
                "INSERT INTO products (name, category, price, active) VALUES (%s, 'produce', %s, %s)"
                " RETURNING id, name, price, active",
                (f"product {n} {restaurant_id[:6]}", f"{n + 1}.25", n < 2),
            ).fetchone()
            assert row is not None
            products.append({"id": str(row["id"]), "name": row["name"], "price": row["price"], "active": row["active"]})
        conn.commit()
    return World(
        restaurant_id=restaurant_id,
        other_restaurant_id=other_id,
        admin=mint_token(JWT_SECRET, role="admin"),
        restaurant=mint_token(JWT_SECRET, role="restaurant", restaurant_id=restaurant_id),
        driver=mint_token(JWT_SECRET, role="driver", sub=driver_id),
        driver_id=driver_id,
        demo=mint_token(JWT_SECRET, role="demo", restaurant_id=restaurant_id),
        other_restaurant=mint_token(JWT_SECRET, role="restaurant", restaurant_id=other_id),
        products=products,
    )


@pytest.fixture(scope="session")
def api_app(config: Config) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.extensions["dms"].close()


@pytest.fixture
def client(api_app: Any) -> Any:
    return api_app.test_client()


def write_events(database_url: str, channel: str, count: int, *, event: str = "test.event") -> list[int]:
    """Commit `count` outbox events on `channel`, one transaction each; return their ids.

    Ids are assigned at commit (sql/0008), so they are read back once every transaction is done.
    """
    from common.db import connect
    from common.events import committed_ids, write_event

    drafts = []
    with connect(database_url) as conn:
        for n in range(count):
            drafts.append(write_event(conn, event=event, channels=[channel], data={"n": n}))
            conn.commit()
        ids = committed_ids(conn, drafts)
        conn.commit()
    assert all(event_id is not None for event_id in ids), "a committed event has no id"
    return [int(event_id) for event_id in ids if event_id is not None]


@pytest.fixture(scope="session")
def gateway(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real gateway process (gevent, flask-sock, relay) shared by the session."""
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

    def start(*, name: str = "gw", wait: bool = True, base: dict[str, str] | None = None,
              **settings: str) -> tuple[Process, dict[str, str]]:
        port = embedded.free_port()
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


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `needs_system("nginx")` skip without it, or fail when DMS_REQUIRE_ALL=1."""
    for marker in item.iter_markers("needs_system"):
        program = marker.args[0]
        if embedded.system_program(program) is None:
            if REQUIRE_ALL:
                pytest.fail(f"{program} is required (DMS_REQUIRE_ALL=1) but not installed", pytrace=False)
            pytest.skip(f"skipped: needs {program}, which pip cannot install")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Servers demoted from root keep their files in stand-ins outside the session's temporary root.
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        embedded.remove_stand_ins(factory.getbasetemp())
    if session.testscollected == 0:
        session.exitstatus = 5
