"""Ids follow commit order: an open transaction holds back nobody but itself, and nothing is skipped.

Event ids are drawn at commit (common/sql/0008_commit_order_ids.sql). These tests run real writers
against the real gateway and its relay: transactions that commit in another order than they
inserted, a writer that keeps its outbox row open while others commit, rollbacks before and
after numbering, and plain INSERTs by the application role.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
import websocket

from common.db import connect
from common.events import committed_ids, write_event
from tests.fix_infra import Infra
from tests.fix_world import World, write_events
from tests.helpers import WsClient, seconds


def _open(gateway: dict[str, str], token: str, channel: str, *, since: int | None = None) -> WsClient:
    ws = WsClient.connect(gateway["url"], token=token)
    ws.recv()
    assert ws.subscribe(channel, since=since)["type"] == "subscribed"
    return ws


def _ids(database_url: str, drafts: list[Any]) -> list[int]:
    with connect(database_url, autocommit=True) as conn:
        found = committed_ids(conn, drafts)
    assert all(event_id is not None for event_id in found)
    return [int(event_id) for event_id in found if event_id is not None]


def _max_id(database_url: str) -> int:
    with connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
    assert row is not None
    return int(row["id"])


def test_an_open_transaction_holds_back_no_one_else(gateway: dict[str, str], infra: Infra, world: World) -> None:
    """The slow writer inserted first; the others' events arrive while it is still open, its own
    arrives after its commit, with a larger id, and recovery from before all of them agrees."""
    channel = f"restaurant:{world.restaurant_id}"
    other = f"order:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    watcher = _open(gateway, world.admin, other)
    before = _max_id(infra.database_url)
    try:
        with connect(infra.database_url) as slow:
            held = write_event(slow, event="test.slow", channels=[channel], data={})
            quick = write_events(infra.database_url, channel, 3, event="test.quick")
            elsewhere = write_events(infra.database_url, other, 2, event="test.elsewhere")
            # Still inside the slow transaction: everyone else's events must already be here.
            assert [e["id"] for e in ws.events(3, channel=channel)] == quick
            assert [e["id"] for e in watcher.events(2, channel=other)] == elsewhere
            assert slow.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            slow.commit()
        (late,) = _ids(infra.database_url, [held])
        assert late > max(quick + elsewhere)
        event = ws.recv_until(lambda f: f.get("type") == "event")
        assert (event["id"], event["event"]) == (late, "test.slow")
        # A client recovering from before all of them sees the same ids in the same order.
        recovering = _open(gateway, world.admin, channel, since=before)
        assert [e["id"] for e in recovering.events(4, channel=channel)] == [*quick, late]
        recovering.close()
    finally:
        ws.close()
        watcher.close()


def test_an_open_transaction_that_rolls_back_is_never_delivered(gateway: dict[str, str], infra: Infra,
                                                                 world: World) -> None:
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as slow:
            write_event(slow, event="test.doomed", channels=[channel], data={})
            first = write_events(infra.database_url, channel, 2)
            assert [e["id"] for e in ws.events(2, channel=channel)] == first
            slow.rollback()
        after = write_events(infra.database_url, channel, 1)
        # Ids are drawn at commit: the rolled-back row never took one, so there is not even a gap.
        assert after == [first[-1] + 1]
        (event,) = ws.events(1, channel=channel)
        assert event["id"] == after[0] and event["event"] == "test.event"
    finally:
        ws.close()


def test_commits_in_reverse_insert_order_get_ids_in_commit_order(gateway: dict[str, str], infra: Infra,
                                                                  world: World) -> None:
    """What used to be "id 10 commits after id 11": ids now follow commits, whichever inserted first
    and whichever took its transaction id first."""
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as first, connect(infra.database_url) as second:
            second.execute("SELECT pg_current_xact_id()")  # the later inserter has the older xid
            a = write_event(first, event="test.first_inserted", channels=[channel], data={})
            b = write_event(second, event="test.second_inserted", channels=[channel], data={})
            second.commit()
            (got_b,) = ws.events(1, channel=channel)
            first.commit()
        id_a, id_b = _ids(infra.database_url, [a, b])
        assert id_b < id_a
        assert got_b["id"] == id_b and got_b["event"] == "test.second_inserted"
        assert [e["id"] for e in ws.events(1, channel=channel)] == [id_a]
    finally:
        ws.close()


def test_a_rollback_after_numbering_is_skipped_without_waiting_for_open_transactions(
        gateway: dict[str, str], infra: Infra, world: World) -> None:
    """A deferred foreign key that fails after the outbox row was numbered leaves a real gap in the
    ids; the relay settles it by the numbering lock, not by waiting for an unrelated open writer."""
    channel = f"restaurant:{world.restaurant_id}"
    with connect(infra.database_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS test_parent (id int PRIMARY KEY)")
        admin.execute("CREATE TABLE IF NOT EXISTS test_child (parent int REFERENCES test_parent"
                      " DEFERRABLE INITIALLY DEFERRED)")
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as slow, connect(infra.database_url) as doomed:
            write_event(slow, event="test.slow", channels=[channel], data={})  # stays open meanwhile
            before = _max_id(infra.database_url)
            write_event(doomed, event="test.lost", channels=[channel], data={})
            doomed.execute("INSERT INTO test_child (parent) VALUES (-1)")  # checked after numbering
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                doomed.commit()
            kept = write_events(infra.database_url, channel, 1, event="test.kept")
            assert kept[0] > before + 1  # the failed commit drew an id: a real gap
            with connect(infra.database_url, autocommit=True) as look:
                assert look.execute("SELECT 1 FROM events WHERE id > %s AND id < %s",
                                    (before, kept[0])).fetchone() is None
            (event,) = ws.events(1, channel=channel)
            assert (event["id"], event["event"]) == (kept[0], "test.kept")
            slow.rollback()
    finally:
        ws.close()


def test_a_drawn_id_not_yet_visible_holds_back_later_ids_until_its_transaction_ends(
        gateway: dict[str, str], infra: Infra, world: World) -> None:
    """The commit-instant race, stretched: `early` draws its id at once (SET CONSTRAINTS ALL
    IMMEDIATE) and stays open; a later id commits. The relay must not publish past the missing id
    while its transaction runs (it holds the numbering lock), then publishes both in id order."""
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as early:
            early.execute("SET CONSTRAINTS ALL IMMEDIATE")
            first = write_event(early, event="test.early", channels=[channel], data={})
            (later,) = write_events(infra.database_url, channel, 1, event="test.later")
            with pytest.raises(websocket.WebSocketTimeoutException):
                ws.recv(timeout_s=1.5)  # longer than the relay's poll: held back, not just slow
            early.commit()
        (early_id,) = _ids(infra.database_url, [first])
        assert early_id < later
        assert [(e["id"], e["event"]) for e in ws.events(2, channel=channel)] == [
            (early_id, "test.early"), (later, "test.later")]
    finally:
        ws.close()


def test_rows_of_one_transaction_keep_their_insert_order(gateway: dict[str, str], infra: Infra,
                                                         world: World) -> None:
    """One transaction, several rows (one in a rolled-back savepoint): consecutive ids in insert order."""
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as conn:
            drafts = [write_event(conn, event="test.batch", channels=[channel], data={"n": n}) for n in range(2)]
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                write_event(conn, event="test.savepoint", channels=[channel], data={"n": -1})
                conn.execute("INSERT INTO events (channels, event, data) VALUES ('{}', 'x', '{}')")
            drafts += [write_event(conn, event="test.batch", channels=[channel], data={"n": n}) for n in (2, 3)]
            conn.commit()
        ids = _ids(infra.database_url, drafts)
        assert ids == list(range(ids[0], ids[0] + 4))
        got = ws.events(4, channel=channel)
        assert [(e["id"], e["data"]["n"]) for e in got] == list(zip(ids, range(4), strict=True))
    finally:
        ws.close()


def test_a_plain_insert_by_the_application_role_is_numbered_and_delivered(
        gateway: dict[str, str], infra: Infra, world: World) -> None:
    """Other producers publish with a plain INSERT, under row-level security's dms_app role; only the
    numbering trigger may draw event ids."""
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    try:
        with connect(infra.database_url) as conn:
            conn.execute("SET LOCAL ROLE dms_app")
            conn.execute("INSERT INTO events (channels, event, data) VALUES (ARRAY[%s], 'test.job', '{}')",
                         (channel,))
            conn.commit()
        (event,) = ws.events(1, channel=channel)
        assert event["event"] == "test.job" and isinstance(event["id"], int)
        with connect(infra.database_url) as conn:
            conn.execute("SET LOCAL ROLE dms_app")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT nextval('events_commit_id')")
    finally:
        ws.close()


def test_many_writers_committing_in_random_order(gateway: dict[str, str], infra: Infra, world: World) -> None:
    channel = f"restaurant:{world.restaurant_id}"
    ws = _open(gateway, world.admin, channel)
    drafts: list[Any] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with connect(infra.database_url) as conn:
            for _ in range(20):
                draft = write_event(conn, event="test.race", channels=[channel], data={})
                time.sleep(rng.random() / 100)
                if rng.random() < 0.1:
                    conn.rollback()
                    continue
                conn.commit()
                with lock:
                    drafts.append(draft)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        committed = _ids(infra.database_url, drafts)
        got: list[Any] = [e["id"] for e in ws.events(len(committed), channel=channel, timeout_s=20)]
        assert got == sorted(committed)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv(timeout_s=seconds(0.5))  # and nothing more (no duplicate)
    finally:
        ws.close()
