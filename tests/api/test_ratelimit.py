"""REST rate limits: per IP and per user, headers on every limited response, proxies, fail open."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.app import create_app
from api.ratelimit import client_ip
from common.config import Config
from devstack import embedded
from tests.api.support import auth, clear_of_window_edge, error_code
from tests.fix_infra import Infra
from tests.fix_world import World

AppFactory = Callable[..., Any]


@pytest.fixture
def make_app(infra: Infra) -> Iterator[AppFactory]:
    """Apps with their own limits; each one is closed at the end of the test."""
    apps: list[Any] = []

    def build(**env: str) -> Any:
        app = create_app(Config.from_env(infra.env(**env)))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["dms"].close()


def _client(app: Any, ip: str | None = None) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip or f"192.0.2.{uuid.uuid4().int % 250 + 1}"
    return client


def test_the_ip_limit_counts_down_then_refuses(make_app: AppFactory, world: World) -> None:
    app = make_app(RATE_LIMIT_IP="5/minute")
    client = _client(app, f"198.51.100.{uuid.uuid4().int % 250 + 1}")
    clear_of_window_edge(60)
    remaining = []
    for _ in range(5):
        response = client.get("/api/products?limit=1", headers=auth(world.restaurant))
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert 0 < int(response.headers["X-RateLimit-Reset"]) <= 60
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    refused = client.get("/api/products?limit=1", headers=auth(world.restaurant))
    assert refused.status_code == 429 and error_code(refused) == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-Request-ID"]
    # Another client address has its own budget.
    assert _client(app).get("/api/products?limit=1", headers=auth(world.restaurant)).status_code == 200


def test_unauthenticated_requests_are_limited_by_ip_too(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMIT_IP="2/minute")
    client = _client(app)
    clear_of_window_edge(60)
    assert [client.get("/api/orders").status_code for _ in range(3)] == [401, 401, 429]


def test_probes_are_never_limited(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMIT_IP="1/minute")
    client = _client(app)
    for _ in range(3):
        for path in ("/health", "/ready"):
            response = client.get(path)
            assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers


def test_the_user_limit_follows_the_user_across_addresses(make_app: AppFactory, world: World) -> None:
    app = make_app(RATE_LIMIT_USER="3/minute")
    clear_of_window_edge(60)
    token = world.token("admin")
    statuses = [_client(app).get("/api/restaurants?limit=1", headers=auth(token)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert _client(app).get("/api/restaurants?limit=1", headers=auth(world.admin)).status_code == 200


def test_forwarded_for_is_believed_only_from_trusted_proxies(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMIT_IP="2/minute", TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8")
    proxy = _client(app, "127.0.0.1")
    clear_of_window_edge(60)
    # Two documentation networks, so the two clients can never draw the same address.
    first, second = (f"{net}.{uuid.uuid4().int % 250 + 1}" for net in ("203.0.113", "198.51.100"))
    # The left-most entry is whatever the client sent; the proxy appended the real peer last.
    spoofed = {"X-Forwarded-For": f"1.1.1.1, {first}, 10.1.2.3"}
    assert [proxy.get("/api/openapi.json", headers=spoofed).status_code for _ in range(3)] == [200, 200, 429]
    assert proxy.get("/api/openapi.json", headers={"X-Forwarded-For": f"1.1.1.1, {second}"}).status_code == 200
    # From an untrusted peer the header is ignored: the peer itself is counted.
    untrusted = _client(app)
    codes = [untrusted.get("/api/openapi.json", headers={"X-Forwarded-For": str(uuid.uuid4())}).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]


def test_client_ip_rules() -> None:
    trusted = ("127.0.0.1", "10.0.0.0/8")
    assert client_ip("198.51.100.7", "1.2.3.4", trusted) == "198.51.100.7"
    assert client_ip("127.0.0.1", "1.2.3.4, 5.6.7.8, 10.0.0.2", trusted) == "5.6.7.8"
    assert client_ip("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", "10.0.0.3, 10.0.0.2", trusted) == "10.0.0.3"
    assert client_ip("127.0.0.1", "garbage", trusted) == "garbage"
    assert client_ip(None, None, ()) == "unknown"


def test_requests_pass_when_redis_is_down(make_app: AppFactory, world: World) -> None:
    app = make_app(RATE_LIMIT_IP="1/minute", REDIS_URL=f"redis://127.0.0.1:{embedded.free_port()}/0")
    client = _client(app)
    for _ in range(3):
        response = client.get("/api/openapi.json")
        assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
