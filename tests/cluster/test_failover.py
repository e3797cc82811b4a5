"""Faults of a Redis Cluster while orders flow: a primary killed, a slot moved. No subscriber that
recovers with `since` misses an event.

Subscribers are `dms_client` clients (they keep the last id per channel and resubscribe with `since`
after any close); the truth they are checked against is the events table.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from common.db import connect
from common.events import REDIS_PREFIX, RELAY_WATERMARK_KEY
from dms_client import DmsClient
from tests.cluster.support import ClusterInfra, ClusterNode, LocalCluster, quietly
from tests.fix_servers import SharedGateway
from tests.fix_world import World
from tests.helpers import WsClient, seconds, wait_for

pytestmark = pytest.mark.needs_system("redis-server")


@dataclass
class Received:
    """What one client got, per channel: event ids in arrival order and when each arrived."""

    ids: dict[str, list[int]] = field(default_factory=dict)
    at: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, channel: str) -> Any:
        def take(frame: dict[str, Any]) -> None:
            with self.lock:
                self.ids.setdefault(channel, []).append(int(frame["id"]))
                self.at.setdefault(int(frame["id"]), time.monotonic())
        return take


class OrderFlow:
    """Orders for the given restaurants through the API, round robin, on a thread, until stopped."""

    def __init__(self, client: Any, world: World, restaurants: list[str]) -> None:
        self.client, self.world, self.restaurants = client, world, restaurants
        self.stopped = threading.Event()
        self.created = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OrderFlow:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=seconds(30))

    def _run(self) -> None:
        n = 0
        while not self.stopped.is_set():
            restaurant = self.restaurants[n % len(self.restaurants)]
            n += 1
            response = self.client.post("/api/orders", headers={"Authorization": f"Bearer {self.world.admin}"},
                                        json={"items": [{"product_id": self.world.products[0]["id"], "quantity": 1}],
                                              "restaurant_id": restaurant, "customer_name": "flow"})
            if response.status_code == 201:
                self.created += 1
            time.sleep(0.01)


def _restaurants(infra: ClusterInfra, cluster: LocalCluster, *, on: ClusterNode, count: int,
                 elsewhere: int) -> list[str]:
    """New restaurants: `count` whose channel lives on `on`'s shard, `elsewhere` on other shards."""
    owners = {slot: node for node in [on] for slot in _slots_of(cluster, node)}
    mine: list[str] = []
    others: list[str] = []
    while len(mine) < count or len(others) < elsewhere:
        rid = str(uuid.uuid4())
        here = key_slot(f"{REDIS_PREFIX}restaurant:{rid}".encode()) in owners
        if here and len(mine) < count:
            mine.append(rid)
        elif not here and len(others) < elsewhere:
            others.append(rid)
    with connect(infra.database_url) as conn:
        for rid in mine + others:
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (rid, f"R {rid[:8]}"))
        conn.commit()
    return mine + others


def _slots_of(cluster: LocalCluster, node: ClusterNode) -> set[int]:
    slots: set[int] = set()
    for first, last, port in cluster.slots():
        if port == node.port:
            slots.update(range(first, last + 1))
    return slots


def _stored(infra: ClusterInfra, channel: str) -> list[int]:
    with connect(infra.database_url) as conn:
        rows = conn.execute("SELECT id FROM events WHERE channels @> ARRAY[%s]::text[] ORDER BY id",
                            (channel,)).fetchall()
    return [int(row["id"]) for row in rows]


def _last_event_id(infra: ClusterInfra) -> int:
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
    return int(row["id"]) if row else 0


@pytest.fixture
def subscribers(gateway: SharedGateway, world: World) -> Iterator[Any]:
    started: list[DmsClient] = []

    def start(channels: list[str]) -> Received:
        received = Received()
        confirmed: set[str] = set()
        client = DmsClient(gateway["url"], token=world.admin, tickets=False, base_s=0.1, cap_s=1.0)
        client.on("subscribed", lambda frame, _since: confirmed.add(frame["channel"]))
        for channel in channels:
            client.subscribe(channel, received.handler(channel))
        started.append(client.start())
        wait_for(lambda: confirmed >= set(channels), timeout_s=10, message="every channel subscribed")
        return received

    yield start
    for client in started:
        client.close()


def _everything_arrived(infra: ClusterInfra, clients: list[Received], channels: list[str]) -> None:
    """Each client has every stored event of each channel, once, in id order."""
    def complete() -> bool:
        return all(received.ids.get(channel, []) == _stored(infra, channel)
                   for received in clients for channel in channels)
    try:
        wait_for(complete, timeout_s=30, interval_s=0.2, message="every stored event at every subscriber")
    except AssertionError:
        for channel in channels:
            stored = _stored(infra, channel)
            for received in clients:
                got = received.ids.get(channel, [])
                assert got == stored, (channel, sorted(set(stored) - set(got))[:10], len(got), len(stored))
        raise


def test_a_killed_primary_loses_nothing(gateway: SharedGateway, infra: ClusterInfra, redis_cluster: LocalCluster,
                                        client: Any, world: World, subscribers: Any,
                                        record_property: Any) -> None:
    # The shard that also holds the relay's watermark: its loss stops every publish, not only its own.
    victim = redis_cluster.owner_of(RELAY_WATERMARK_KEY)
    replica = redis_cluster.replica_of(victim)
    restaurants = _restaurants(infra, redis_cluster, on=victim, count=2, elsewhere=2)
    channels = [f"restaurant:{rid}" for rid in restaurants]
    clients = [subscribers(channels), subscribers(channels)]
    promoted_at: list[float] = []

    def watch_promotion() -> None:
        probe = replica.client(socket_connect_timeout=1)
        while not promoted_at:
            if quietly(lambda: probe.info("replication").get("role") == "master")():
                promoted_at.append(time.monotonic())
            time.sleep(0.01)

    with OrderFlow(client, world, restaurants) as flow:
        wait_for(lambda: all(len(r.ids.get(c, [])) >= 2 for r in clients for c in channels), timeout_s=15,
                 message="orders flowing to every subscriber")
        before_kill = _last_event_id(infra)
        watcher = threading.Thread(target=watch_promotion, daemon=True)
        killed_at = time.monotonic()
        redis_cluster.kill(victim)
        watcher.start()
        watcher.join(timeout=seconds(30))
        assert promoted_at, "the replica was never promoted"
        on_victim = channels[:2]
        wait_for(lambda: any(i > before_kill for r in clients for c in on_victim for i in r.ids.get(c, [])),
                 timeout_s=30, message="an event committed after the kill, on the killed shard's channels")
        time.sleep(seconds(0.5))  # orders keep flowing for a moment on the promoted primary
    assert flow.created > 10

    _everything_arrived(infra, clients, channels)
    first = min(r.at[i] for r in clients for c in on_victim for i in r.ids.get(c, []) if i > before_kill)
    timeline = (f"kill -> replica promoted {promoted_at[0] - killed_at:.2f}s -> first event delivered "
                f"{first - killed_at:.2f}s (cluster-node-timeout 1s)")
    print(f"\nRedis Cluster failover: {timeline}")
    record_property("failover", timeline)
    assert "hub moving" in Path(gateway["log"]).read_text(errors="replace")  # the hub followed the shard

    # A client connecting now recovers the kill's whole window with `since`.
    late = WsClient.connect(gateway["url"], token=world.admin)
    try:
        assert late.recv()["type"] == "welcome"
        stored = [i for i in _stored(infra, channels[0]) if i > before_kill - 50]
        since = stored[0]
        assert late.subscribe(channels[0], since=since)["recovered"] is True
        assert [e["id"] for e in late.events(len(stored) - 1, channel=channels[0])] == stored[1:]
    finally:
        late.close()
        # The killed node comes back as a replica of the promoted one, for the tests after this one.
        redis_cluster.start_node(victim)
        redis_cluster.wait_ok()


def test_a_slot_moved_while_live_loses_nothing(gateway: SharedGateway, infra: ClusterInfra,
                                               redis_cluster: LocalCluster, client: Any, world: World,
                                               subscribers: Any) -> None:
    source = redis_cluster.primaries()[0]
    target = next(node for node in redis_cluster.primaries() if node is not source)
    (restaurant,) = _restaurants(infra, redis_cluster, on=source, count=1, elsewhere=0)
    channel = f"restaurant:{restaurant}"
    slot = key_slot(f"{REDIS_PREFIX}{channel}".encode())
    received = subscribers([channel])

    with OrderFlow(client, world, [restaurant]):
        wait_for(lambda: len(received.ids.get(channel, [])) >= 3, timeout_s=15, message="orders flowing")
        moved_at = _last_event_id(infra)
        redis_cluster.move_slot(slot, source, target)
        wait_for(lambda: any(i > moved_at for i in received.ids.get(channel, [])), timeout_s=20,
                 message="an event published after the move")
        time.sleep(seconds(0.3))

    assert redis_cluster.owner_of(f"{REDIS_PREFIX}{channel}") is target
    _everything_arrived(infra, [received], [channel])
    assert f"dropped {REDIS_PREFIX}{channel}" in Path(gateway["log"]).read_text(errors="replace")


def test_every_node_of_the_map_is_a_seed(redis_cluster: LocalCluster) -> None:
    """The hub's slot map learns every node from one seed, so it survives losing that seed."""
    from gateway.cluster_hub import SlotMap

    first = redis_cluster.live()[0]
    slots = SlotMap((f"127.0.0.1:{first.port}",))
    slots.refresh()
    assert {port for _, port in slots.known} >= {node.port for node in redis_cluster.primaries()}
    assert all(owner is not None for owner in slots.owners)
    with pytest.raises(redis.ConnectionError):
        SlotMap(("127.0.0.1:1",)).refresh()


def test_the_near_cache_listener_survives_losing_its_node(redis_cluster: LocalCluster, config: Any) -> None:
    """Its node killed, the listener turns the near cache off, then listens on another node."""
    from api.near_cache import CHANNEL, NearCache, NearEntry, run_listener
    from common.redis_client import redis_for

    client, publisher = redis_for(config), redis_for(config)
    near = NearCache()
    stop = threading.Event()
    listener = threading.Thread(target=run_listener, args=(near, client, "dms:{api}:cache:hits"),
                                kwargs={"flush_every_s": 0.05, "retry_s": 0.1, "stopped": stop.is_set}, daemon=True)
    try:
        listener.start()
        wait_for(lambda: near.listening, timeout_s=5, message="the listener to subscribe")
        (victim,) = [node for node in redis_cluster.live()
                     if node.client().execute_command("PUBSUB", "NUMSUB", CHANNEL)[1]]
        redis_cluster.kill(victim)
        wait_for(lambda: not near.listening, timeout_s=10, message="the listener to notice its node is gone")
        wait_for(lambda: near.listening, timeout_s=30, message="the listener back on the promoted replica")
        near.put("products", "k", NearEntry("text", "e"), epoch=near.epoch("products"))
        wait_for(lambda: _published(publisher) and not near.peek("products", "k"), timeout_s=10,
                 message="a change published after the failover to drop the copy")
    finally:
        stop.set()
        listener.join(timeout=10)
        client.close()
        publisher.close()
        for node in redis_cluster.nodes:
            if node.process is None:
                redis_cluster.start_node(node)
        redis_cluster.wait_ok()
    assert not listener.is_alive()


def _published(client: Any) -> bool:
    from api.near_cache import publish_change

    try:
        publish_change(client, "products")
    except redis.RedisError:
        return False
    return True
