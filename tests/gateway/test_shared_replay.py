"""Recovery that costs PostgreSQL per channel, not per client (contract section 6), on a real gateway.

A fresh gateway holds no history, so the first replay of a channel needs the store: every replay
of that channel asked for in the same moment shares that one read. A client further behind than
a shared read reaches pages the store alone and still gets everything, in order, once.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import write_events
from tests.gateway.test_metrics import scrape, value
from tests.helpers import WsClient, seconds

RECOVERING = 20


def _admin(url: str) -> WsClient:
    client = WsClient.connect(url, token=mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4())))
    assert client.recv()["type"] == "welcome"
    return client


def _reads(http: str) -> dict[str, float]:
    samples = scrape(http)
    return {"shared": value(samples, "dms_gateway_replay_store_reads_total", kind="shared"),
            "own": value(samples, "dms_gateway_replay_store_reads_total", kind="own")}


def _replayed(client: WsClient, channel: str, count: int) -> list[int]:
    return [event["id"] for event in client.events(count, channel=channel, timeout_s=15)]


def test_replays_of_one_channel_asked_at_once_share_one_read(start_gateway: Any, infra: Infra) -> None:
    channel = f"restaurant:{uuid.uuid4()}"
    ids = write_events(infra.database_url, channel, 8)
    _, gw = start_gateway(name="shared-replay")
    clients = [_admin(gw["url"]) for _ in range(RECOVERING)]
    before = _reads(gw["http"])
    start = threading.Barrier(RECOVERING)
    replies: list[dict[str, Any]] = []

    def recover(client: WsClient) -> None:
        start.wait(timeout=seconds(10))
        replies.append(client.subscribe(channel, since=ids[1]))

    threads = [threading.Thread(target=recover, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds(30))
    assert len(replies) == RECOVERING and all(reply["recovered"] for reply in replies), replies
    for client in clients:
        assert _replayed(client, channel, len(ids) - 2) == ids[2:]
    after = _reads(gw["http"])
    assert after["shared"] - before["shared"] == 1, (before, after)
    assert after["own"] == before["own"]
    for client in clients:
        client.close()


def test_a_client_behind_what_the_shared_read_reaches_still_gets_everything(start_gateway: Any,
                                                                              infra: Infra) -> None:
    channel = f"restaurant:{uuid.uuid4()}"
    ids = write_events(infra.database_url, channel, 12)
    # A history of 6 events per channel: a shared read fetches the newest 3 below what it holds.
    _, gw = start_gateway(name="behind", WS_HISTORY_EVENTS="6")
    near, far = _admin(gw["url"]), _admin(gw["url"])
    before = _reads(gw["http"])
    assert near.subscribe(channel, since=ids[8])["recovered"] is True
    assert _replayed(near, channel, 3) == ids[9:]
    assert far.subscribe(channel, since=ids[0])["recovered"] is True
    assert _replayed(far, channel, 11) == ids[1:]
    (live,) = write_events(infra.database_url, channel, 1)
    assert _replayed(near, channel, 1) == [live]
    assert _replayed(far, channel, 1) == [live]
    after = _reads(gw["http"])
    assert after["shared"] - before["shared"] == 2  # one each: the far client's reached too little
    assert after["own"] - before["own"] >= 1  # so it paged the store alone
    assert far.request({"type": "ping"})["type"] == "pong"  # anything sent twice would come before this
    assert [f["id"] for f in far.seen if f.get("type") == "event"] == [*ids[1:], live]
    near.close()
    far.close()
