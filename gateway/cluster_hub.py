"""The hub on a Redis Cluster: one sharded pub/sub connection per shard primary that owns a held channel.

Sharded pub/sub (`SSUBSCRIBE`) delivers a channel's messages only on the primary that owns the
channel's slot, so the hub groups its channels by slot owner and holds one connection to each such
primary (`ShardLink`). The fan-out, histories and confirmations stay the single-node `Hub`'s.

A channel leaves its connection when
- the connection is lost (the primary died: its replica is promoted after the cluster's node
  timeout), or the primary answers a subscribe with MOVED (the slot map was stale): every channel
  of that connection moves;
- the primary sends `sunsubscribe` for a channel nobody asked to drop (the slot moved to another
  node, or the primary was demoted): that channel moves.
A moving channel's history is reset, its confirmation cleared and its subscribers told to hold its
live events; the slot map is read again from any node that answers (retrying until the slot has a
reachable owner), the channel is subscribed on its owner, and once every such subscription is
confirmed the subscribers are resynchronised from PostgreSQL (`on_reconnect`), exactly as after a
single Redis came back. redis-py's own cluster pub/sub is not used: it resubscribes by itself on
failover, which would hide the gap to recover. Messages are dispatched one at a time here (the
single-node hub's corked bursts read its one connection).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import gevent
import redis
from gevent.event import Event as GEvent
from loguru import logger
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from common.config import Config
from common.events import REDIS_PREFIX
from common.redis_client import make_redis
from gateway.history import MAX_EVENTS_PER_CHANNEL
from gateway.hub import _LOST, Hub
from gateway.metrics import RECONNECTS
from gateway.pubsub_changes import PendingChanges

Node = tuple[str, int]
SLOTS = 16384
# The single-node hub's pub/sub reads: long enough for any message that has started to arrive.
HUB_SOCKET_TIMEOUT_S = 5.0


class SlotMap:
    """Which primary owns each slot, read with CLUSTER SLOTS from any node that answers."""

    def __init__(self, seeds: tuple[str, ...], *, timeout_s: float = 1.0) -> None:
        self.known: list[Node] = [(host, int(port)) for host, _, port in (seed.rpartition(":") for seed in seeds)]
        self.timeout_s = timeout_s
        self.owners: list[Node | None] = [None] * SLOTS

    def owner(self, redis_channel: str) -> Node | None:
        return self.owners[key_slot(redis_channel.encode())]

    def refresh(self) -> None:
        """Read the map again; raise `redis.ConnectionError` when no known node answers."""
        for host, port in list(self.known):
            client = redis.Redis(host=host, port=port, socket_timeout=self.timeout_s,
                                 socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0))
            try:
                ranges = client.execute_command("CLUSTER SLOTS")
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
            self._take(ranges)
            return
        raise redis.ConnectionError("no Redis Cluster node answered CLUSTER SLOTS")

    def _take(self, ranges: Any) -> None:
        owners: list[Node | None] = [None] * SLOTS
        seen: list[Node] = []
        # Each entry: first slot, last slot, the primary [host, port, id, ...], then its replicas.
        for first, last, primary, *replicas in ranges:
            owner = _node(primary)
            owners[int(first):int(last) + 1] = [owner] * (int(last) - int(first) + 1)
            seen += [owner, *(_node(replica) for replica in replicas)]
        self.owners = owners
        # Every node of the map is a place to ask next time, so losing the seeds loses nothing.
        self.known = list(dict.fromkeys([*seen, *self.known]))


def _node(address: Any) -> Node:
    host, port = address[0], address[1]
    return (host.decode() if isinstance(host, bytes) else str(host), int(port))


class ShardLink:
    """One sharded pub/sub connection to one primary, with the hub channels it carries."""

    def __init__(self, hub: ClusterHub, node: Node) -> None:
        self.hub = hub
        self.node = node
        self.channels: set[str] = set()  # hub channel names (without REDIS_PREFIX)
        self.pubsub: Any = None
        self.connected = False  # reached its primary at least once (a refused connect is not news)
        self.greenlet: gevent.Greenlet | None = None
        self.changes = PendingChanges()  # applied by `_run` only (gateway.pubsub_changes)
        self.sent: set[str] = set()  # channels it sent SSUBSCRIBE for, held or dropped since

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self._close()

    def add(self, channel: str) -> None:
        self.channels.add(channel)
        self.changes.mark(channel)

    def discard(self, channel: str) -> None:
        self.channels.discard(channel)
        self.changes.mark(channel)

    def _run(self) -> None:
        host, port = self.node
        try:
            # No retry inside redis-py: a lost connection must reach the hub, which recovers the gap.
            # No read timeout either: the reader blocks in get_sharded_message on a quiet line.
            client = redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=None,
                                 socket_connect_timeout=2.0, health_check_interval=30, retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            pubsub.ping()
            self.pubsub = pubsub
            self.connected = True
            self.changes.take()  # every channel is subscribed now, marked or not
            self._subscribe(pubsub, list(self.channels))
            while True:
                changed = self.changes.take()
                self._subscribe(pubsub, [channel for channel in changed if channel in self.channels])
                for names in _by_slot(channel for channel in changed if channel not in self.channels):
                    pubsub.sunsubscribe(*names)
                message = pubsub.get_sharded_message(timeout=0.0)
                if message is None:
                    self.changes.wait(pubsub, timeout_s=1.0)
                elif message.get("type") == "sunsubscribe":
                    self._dropped_by_server(message)
                else:
                    self.hub._dispatch(message)
        except (*_LOST, AttributeError) as exc:
            self._close()
            self.hub._link_lost(self, exc)

    def _subscribe(self, pubsub: Any, channels: list[str]) -> None:
        self.sent.update(channels)
        self.hub._sent_subscribe(channels)
        for names in _by_slot(channels):
            pubsub.ssubscribe(*names)

    def _dropped_by_server(self, message: dict[str, Any]) -> None:
        raw = str(message.get("channel") or "")
        channel = raw[len(REDIS_PREFIX):] if raw.startswith(REDIS_PREFIX) else None
        if channel is not None and channel in self.channels:  # we did not ask: its slot left this node
            self.channels.discard(channel)
            self.hub._move([channel], why=f"{host_port(self.node)} dropped {raw}")

    def _close(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                pass


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """Hub channels as Redis names, grouped by slot: a command naming several slots is refused (CROSSSLOT)."""
    groups: dict[int, list[str]] = {}
    for channel in channels:
        name = REDIS_PREFIX + channel
        groups.setdefault(key_slot(name.encode()), []).append(name)
    return list(groups.values())


def host_port(node: Node) -> str:
    return f"{node[0]}:{node[1]}"


class ClusterHub(Hub):
    """`Hub` whose upstream is a Redis Cluster's sharded pub/sub, one connection per owning primary."""

    def __init__(self, commands: redis.Redis, seeds: tuple[str, ...], *, confirm_timeout_s: float = 5.0,
                 reconnect_backoff_s: float = 0.2, history_events: int = MAX_EVENTS_PER_CHANNEL) -> None:
        super().__init__(commands, confirm_timeout_s=confirm_timeout_s, reconnect_backoff_s=reconnect_backoff_s,
                         history_events=history_events)
        self.slots = SlotMap(seeds)
        self.links: dict[Node, ShardLink] = {}
        self._moving: set[str] = set()  # channels waiting for the slot map to name a reachable owner
        self._mover: gevent.Greenlet | None = None
        self._moved = GEvent()
        self._resyncer: gevent.Greenlet | None = None
        self._resync_wanted = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        try:
            self.slots.refresh()
            self.healthy.set()
        except redis.ConnectionError as exc:
            logger.warning("hub cannot read the cluster's slot map yet: {}", exc)
        self._mover = gevent.spawn(self._move_forever)

    def stop(self) -> None:
        self._running = False
        if self._mover is not None:
            self._mover.kill(block=True, timeout=2)
        for link in list(self.links.values()):
            link.stop()
        self.links.clear()

    # -- subscriptions -------------------------------------------------------------------------
    def _subscribe_upstream(self, channel: str) -> None:
        owner = self.slots.owner(REDIS_PREFIX + channel)
        if owner is None:
            self._move([channel], why="no slot map yet")
        else:
            self._link(owner).add(channel)

    def _unsubscribe_upstream(self, channel: str) -> None:
        self._moving.discard(channel)
        for link in self.links.values():
            if channel in link.channels:
                link.discard(channel)

    def _change_pending(self, channel: str) -> bool:
        return channel in self._moving or any(channel in link.changes for link in self.links.values())

    def _link(self, node: Node) -> ShardLink:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = ShardLink(self, node)
            link.start()
        return link

    # -- moving channels to their owner --------------------------------------------------------
    def _link_lost(self, link: ShardLink, exc: BaseException) -> None:
        if self.links.get(link.node) is link:
            del self.links[link.node]
        if not self._running:
            return
        if link.connected:
            RECONNECTS.labels("hub", "redis").inc()
        for channel in link.sent:  # its unanswered SSUBSCRIBEs never will be, held or not
            self._unanswered.pop(channel, None)
        self._move(sorted(link.channels), why=f"lost {host_port(link.node)}: {type(exc).__name__}: {exc}",
                   quiet=not link.connected)
        link.channels.clear()

    def _move(self, channels: list[str], *, why: str, quiet: bool = False) -> None:
        """Forget what these channels held (the gap is recovered from PostgreSQL) and re-home them.

        `quiet`: a retry while a dead primary is still named the owner, logged at debug level only.
        """
        affected = [channel for channel in channels if channel in self.channels]
        if not affected:
            return
        (logger.debug if quiet else logger.warning)("hub moving {} channel(s): {}", len(affected), why)
        for channel in affected:
            self._unanswered.pop(channel, None)  # a lost or dropped subscription answers no more
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.clear()
            history = self.histories.get(channel)
            if history is not None:
                history.reset()  # what was published while the channel had no subscription is unknown
        self._hold(affected)
        self._moving.update(affected)
        self._moved.set()

    def _move_forever(self) -> None:
        while self._running:
            self._moved.wait()
            self._moved.clear()
            gevent.sleep(self.reconnect_backoff_s)  # an owner that just died is still in the map a while
            try:
                self.slots.refresh()
                self.healthy.set()
            except redis.ConnectionError as exc:
                logger.warning("hub cannot read the cluster's slot map: {}", exc)
                self._moved.set()
                continue
            moving, self._moving = self._moving, set()
            homed: list[str] = []
            for channel in moving:
                owner = self.slots.owner(REDIS_PREFIX + channel)
                if channel not in self.channels:
                    continue
                if owner is None:
                    self._moving.add(channel)
                    continue
                self._link(owner).add(channel)
                homed.append(channel)
            if self._moving:
                self._moved.set()
            if homed:
                logger.debug("hub subscribing {} moved channel(s) on their owners", len(homed))
            if homed and self.on_reconnect is not None:
                self._request_resync()

    def _request_resync(self) -> None:
        """Resynchronise subscribers once the moved channels are confirmed; one pass at a time, and
        another after it when channels moved again meanwhile (their gap began after its watermark)."""
        self._resync_wanted = True
        if self._resyncer is None or self._resyncer.dead:
            self._resyncer = gevent.spawn(self._resync_while_wanted)

    def _resync_while_wanted(self) -> None:
        while self._resync_wanted and self._running:
            self._resync_wanted = False
            self._await_then_resync()
            logger.info("hub resubscribed moved channels; resynchronising their subscribers")


def hub_for(config: Config, commands: redis.Redis, *, history_events: int) -> Hub:
    """The single-node hub on `REDIS_URL`, or the sharded one when `REDIS_CLUSTER_NODES` is set."""
    if config.redis_cluster_nodes:
        return ClusterHub(commands, config.redis_cluster_nodes, history_events=history_events)
    # No retry inside redis-py: a lost pub/sub connection must reach the hub's own loop, which holds
    # the channels and resynchronises their subscribers from PostgreSQL after reconnecting, instead
    # of redis-py reconnecting and resubscribing inside get_message, up to ten times, unseen. And a
    # read timeout, so a reply that never comes (a Redis stalled mid-handshake) ends in the hub's
    # own reconnect rather than a wait for good. The reader reads only once bytes have arrived, so
    # the timeout never ends a quiet line.
    return Hub(make_redis(config.redis_url, socket_timeout_s=HUB_SOCKET_TIMEOUT_S, retries=0),
               history_events=history_events)
