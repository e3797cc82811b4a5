"""Logs (contract section 5): request_id on every line of a request, LOG_SAMPLE_INFO, per-greenlet context."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from flask import request
from loguru import logger

from api.app import create_app
from common.config import Config, ConfigError
from common.logging import keep_access_line, log_context, setup_logging
from devstack import embedded
from tests.api.support import auth
from tests.fix_infra import Infra
from tests.fix_world import World

Records = list[dict[str, Any]]


@pytest.fixture
def records() -> Iterator[Records]:
    """Every loguru record written during the test (stdlib loggers routed in as the services do)."""
    setup_logging(level="DEBUG")
    found: Records = []
    sink = logger.add(lambda message: found.append(message.record), level="DEBUG")
    yield found
    logger.remove(sink)


def _app(infra: Infra, **env: str) -> Any:
    app = create_app(Config.from_env(infra.env(**env)))

    def probe() -> Any:
        # What deeper modules do: a loguru warning and a stdlib library's warning.
        logger.warning("probe warning from a deeper module")
        logging.getLogger("some.library").warning("probe warning through the stdlib")
        time.sleep(float(request.args.get("sleep", "0")))
        return {"ok": True}

    app.add_url_rule("/api/_log_probe", "log_probe", probe)
    return app


def _client(app: Any) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"198.19.{uuid.uuid4().int % 250 + 1}.{uuid.uuid4().int % 250 + 1}"
    return client


def _access_lines(records: Records, request_id: str) -> Records:
    return [r for r in records if r["message"] == "request" and r["extra"].get("request_id") == request_id]


def test_every_line_of_a_request_carries_its_request_id(infra: Infra, records: Records) -> None:
    app = _app(infra)
    try:
        rid = f"probe-{uuid.uuid4().hex[:12]}"
        response = _client(app).get("/api/_log_probe", headers={"X-Request-ID": rid})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == rid
        mine = [r for r in records if "probe warning" in r["message"]]
        assert len(mine) == 2
        assert all(r["extra"].get("request_id") == rid for r in mine), [r["extra"] for r in mine]
        assert {r["level"].name for r in mine} == {"WARNING"}
        assert len(_access_lines(records, rid)) == 1
        # Lines written after the request carry no stale id.
        logger.info("between requests")
        assert "request_id" not in records[-1]["extra"]
    finally:
        app.extensions["dms"].close()


def test_fail_open_warnings_of_a_request_carry_its_request_id(infra: Infra, world: World,
                                                              records: Records) -> None:
    app = _app(infra, REDIS_URL=f"redis://127.0.0.1:{embedded.free_port()}/0")
    try:
        rid = f"redis-down-{uuid.uuid4().hex[:8]}"
        response = _client(app).get("/api/products?limit=2", headers=auth(world.restaurant, **{"X-Request-ID": rid}))
        assert response.status_code == 200
        warnings = [r for r in records if r["level"].name == "WARNING"]
        limiter = [r for r in warnings if "rate limiter unavailable" in r["message"]]
        cache = [r for r in warnings if "cache unavailable" in r["message"]]
        assert limiter and cache
        assert all(r["extra"].get("request_id") == rid for r in limiter + cache)
    finally:
        app.extensions["dms"].close()


def test_sampling_drops_routine_access_lines_but_never_errors_warnings_or_slow_requests(
        infra: Infra, world: World, records: Records) -> None:
    app = _app(infra, LOG_SAMPLE_INFO="0")
    try:
        client = _client(app)
        fast = client.get("/api/openapi.json", headers={"X-Request-ID": "fast-ok-0001"})
        assert fast.status_code == 200
        missing = client.get(f"/api/orders/{uuid.uuid4()}", headers=auth(world.admin, **{"X-Request-ID":
                                                                                          "not-found-0001"}))
        assert missing.status_code == 404
        unauthorised = client.get("/api/orders", headers={"X-Request-ID": "no-token-0001"})
        assert unauthorised.status_code == 401
        slow = client.get("/api/_log_probe?sleep=0.25", headers={"X-Request-ID": "slow-ok-0001"})
        assert slow.status_code == 200
        assert _access_lines(records, "fast-ok-0001") == []
        assert len(_access_lines(records, "not-found-0001")) == 1
        assert len(_access_lines(records, "no-token-0001")) == 1
        assert len(_access_lines(records, "slow-ok-0001")) == 1
        assert [r for r in records if r["extra"].get("request_id") == "slow-ok-0001"
                and r["level"].name == "WARNING"]  # warnings of a request are never sampled
    finally:
        app.extensions["dms"].close()


def test_the_default_writes_every_access_line(infra: Infra, records: Records) -> None:
    app = _app(infra)
    try:
        for n in range(5):
            assert _client(app).get("/api/openapi.json", headers={"X-Request-ID": f"every-{n}-0001"}).status_code \
                == 200
        assert all(len(_access_lines(records, f"every-{n}-0001")) == 1 for n in range(5))
    finally:
        app.extensions["dms"].close()


def test_keep_access_line_rules() -> None:
    assert keep_access_line(status=200, duration_ms=5, sample=0.25, draw=lambda: 0.1)
    assert not keep_access_line(status=200, duration_ms=5, sample=0.25, draw=lambda: 0.3)
    assert keep_access_line(status=200, duration_ms=250, sample=0.0, draw=lambda: 0.99)
    assert keep_access_line(status=503, duration_ms=1, sample=0.0, draw=lambda: 0.99)
    assert keep_access_line(status=422, duration_ms=1, sample=0.0, draw=lambda: 0.99)
    assert keep_access_line(status=200, duration_ms=1, sample=1.0, draw=lambda: 0.99999)


def test_log_sample_info_is_a_share(infra: Infra) -> None:
    assert Config.from_env(infra.env()).log_sample_info == 1.0
    assert Config.from_env(infra.env(LOG_SAMPLE_INFO="0.1")).log_sample_info == 0.1
    with pytest.raises(ConfigError, match="LOG_SAMPLE_INFO"):
        Config.from_env(infra.env(LOG_SAMPLE_INFO="2"))


def test_each_greenlet_logs_with_its_own_id(records: Records) -> None:
    """Two connections served at once by one gevent process never mix their ids."""

    def serve(name: str) -> None:
        with log_context(connection_id=name):
            for step in range(3):
                logger.info("step {} of {}", step, name)
                gevent.sleep(0.001)  # let the other greenlet run in between

    gevent.joinall([gevent.spawn(serve, "conn-a"), gevent.spawn(serve, "conn-b")], raise_error=True)
    lines = [r for r in records if r["message"].startswith("step ")]
    assert len(lines) == 6
    assert all(r["message"].endswith(r["extra"]["connection_id"]) for r in lines)
    order = [r["extra"]["connection_id"] for r in lines]
    assert order != sorted(order)  # they did interleave
