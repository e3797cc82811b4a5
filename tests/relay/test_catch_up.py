"""The relay through a backlog of several batches: in id order on every channel, cursor and watermark at the end."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

from common import outbox
from common.db import connect
from common.events import REDIS_PREFIX, RELAY_WATERMARK_KEY
from common.migrations import migrate
from devstack import embedded
from relay.loop import CURSOR_NAME, Relay
from tests.fix_infra import Infra
from tests.helpers import wait_for


@pytest.fixture
def own_db(infra: Infra) -> str:
    """A database of its own: the relay reads every event in it from id 1."""
    url = embedded.create_database(infra.postgres.port, f"relay_{uuid.uuid4().hex[:10]}")
    migrate(url)
    return url


def test_a_backlog_of_several_batches_is_published_in_order_with_the_cursor_and_watermark_at_its_end(
        own_db: str, own_redis: str) -> None:
    channels = ["orders", f"restaurant:{uuid.uuid4()}", f"order:{uuid.uuid4()}"]
    with connect(own_db) as conn:
        for start in range(0, 1300, 100):  # 13 transactions of 100 rows: three read batches of 500
            conn.execute("INSERT INTO events (channels, event, data) SELECT %s, 'test.backlog',"
                         " jsonb_build_object('n', g) FROM generate_series(%s::int, %s::int) AS g",
                         (channels, start, start + 99))
            conn.commit()
    client = redis.Redis.from_url(own_redis)
    listener = client.pubsub()
    listener.subscribe(*(REDIS_PREFIX + channel for channel in channels))
    wait_for(lambda: listener.get_message(timeout=0.1) is None and len(client.pubsub_channels()) == 3,
             message="subscribed to the three channels")
    relay = Relay(listen_url=own_db, redis_client=client, batch_size=500)
    with connect(own_db, autocommit=True) as conn:
        assert relay._try_lead(conn)
        assert relay.catch_up(conn) == 1300
        cursor = conn.execute("SELECT last_id FROM relay_cursor WHERE name = %s", (CURSOR_NAME,)).fetchone()
        last = conn.execute("SELECT max(id) AS id FROM events").fetchone()
    assert last is not None and cursor is not None and cursor["last_id"] == last["id"] == relay.last_id
    assert int(client.get(RELAY_WATERMARK_KEY) or 0) == last["id"]

    seen: dict[str, list[tuple[int, Any]]] = {channel: [] for channel in channels}

    def all_in() -> bool:
        while (message := listener.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            event_id, frame = outbox.decode(message["data"].decode())
            body = json.loads(frame)
            seen[body["channel"]].append((int(event_id or 0), body["data"]["n"]))
        return all(len(got) == 1300 for got in seen.values())

    assert wait_for(all_in, message="every event on every channel")
    for got in seen.values():
        assert [n for _, n in got] == list(range(1300))  # insertion order, which ids follow within a commit
        assert [event_id for event_id, _ in got] == list(range(last["id"] - 1299, last["id"] + 1))
    listener.close()
