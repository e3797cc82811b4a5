"""Commit order differs from id order: subscribers and recovery must still never skip an id."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import websocket

from common.db import connect
from common.events import RELAY_WATERMARK_KEY, write_event
from tests.conftest import Infra, World
from tests.helpers import WsClient


def _open(gateway: dict[str, str], token: str, channel: str) -> WsClient:
    ws = WsClient.connect(gateway["url"], token=token)
    ws.recv()
    assert ws.subscribe(channel)["type"] == "subscribed"
    return ws


def _watermark(infra: Infra) -> int:
    return int(redis.Redis.from_url(infra.redis_url).get(RELAY_WATERMARK_KEY) or 0)


def test_id_10_committed_after_id_11_is_still_delivered_first(gateway: dict[str, str], infra: Infra,
                                                               world: World) -> None:
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as first, connect(infra.database_url) as second:
            low = write_event(first, event="test.low", channels=[channel], data={})
            high = write_event(second, event="test.high", channels=[channel], data={})
            assert high > low
            second.commit()
            # For longer than the relay's poll interval, `high` is committed and must be held
            # back while `low`'s transaction runs: nothing may reach the subscriber.
            with pytest.raises(websocket.WebSocketTimeoutException):
                ws.recv(timeout_s=1.5)
            assert _watermark(infra) < low
            first.commit()
        got = [e["id"] for e in ws.events(2, channel=channel)]
        assert got == [low, high]
        # A client recovering from before both sees the same order.
        late = WsClient.connect(gateway["url"], token=world.admin)
        late.recv()
        late.subscribe(channel, since=low - 1)
        assert [e["id"] for e in late.events(2, channel=channel)] == [low, high]
        late.close()
    finally:
        ws.close()


def test_the_held_back_transaction_may_have_the_newest_xid(gateway: dict[str, str], infra: Infra,
                                                           world: World) -> None:
    """The later committer took its xid first: since PostgreSQL 14 a snapshot does not list a running
    transaction newer than the latest completed one, so a list of running xids would miss it."""
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as first, connect(infra.database_url) as second:
            second.execute("SELECT pg_current_xact_id()")  # the committer's xid is the older one
            low = write_event(first, event="test.low", channels=[channel], data={})
            high = write_event(second, event="test.high", channels=[channel], data={})
            second.commit()
            with pytest.raises(websocket.WebSocketTimeoutException):
                ws.recv(timeout_s=1.5)
            first.commit()
        assert [e["id"] for e in ws.events(2, channel=channel)] == [low, high]
    finally:
        ws.close()


def test_a_rolled_back_id_does_not_block_later_events(gateway: dict[str, str], infra: Infra, world: World) -> None:
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as doomed, connect(infra.database_url) as kept:
            lost = write_event(doomed, event="test.lost", channels=[channel], data={})
            after = write_event(kept, event="test.kept", channels=[channel], data={})
            kept.commit()
            doomed.rollback()
        (event,) = ws.events(1, channel=channel)
        assert event["id"] == after and after > lost
    finally:
        ws.close()


def test_many_writers_committing_in_random_order(gateway: dict[str, str], infra: Infra, world: World) -> None:
    import random
    import threading

    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    committed: list[int] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with connect(infra.database_url) as conn:
            for _ in range(20):
                event_id = write_event(conn, event="test.race", channels=[channel], data={})
                time.sleep(rng.random() / 100)
                if rng.random() < 0.1:
                    conn.rollback()
                    continue
                conn.commit()
                with lock:
                    committed.append(event_id)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        got: list[Any] = [e["id"] for e in ws.events(len(committed), channel=channel, timeout_s=20)]
        assert got == sorted(committed)
    finally:
        ws.close()
