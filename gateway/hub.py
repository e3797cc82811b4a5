"""The hub: one Redis pub/sub connection per process fanning events out to local connections.

Channels are reference-counted: the first local subscriber subscribes upstream (and waits for
Redis to confirm, so nothing published after that point can be missed), the last one
unsubscribes. Only the reader greenlet uses the pub/sub connection: the others mark channels for
it to (un)subscribe (gateway.pubsub_changes). Each message becomes one `Outgoing` (id, text,
frame bytes built once: server frames are unmasked, so the same bytes serve every subscriber)
handed to every local subscriber, which writes it through to its socket or queues it; nobody
waits on a slow socket here. On `driver:*` an order event is tagged here once per message
(common.visibility), so each subscriber only compares ids. Messages arrive in the outbox wire
format (common.outbox).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gevent
import redis
from gevent.event import Event as GEvent
from loguru import logger

from common import outbox, visibility
from common.errors import Unavailable
from common.events import REDIS_PREFIX, publish_ephemeral
from gateway.connection import Outgoing
from gateway.history import MAX_EVENTS_PER_CHANNEL, ChannelHistory
from gateway.metrics import BURST_MESSAGES, BURSTS, DELIVERY_SAMPLE_EVERY, RECONNECTS, observe_delivery
from gateway.pubsub_changes import PendingChanges

# How a lost pub/sub connection shows in its reader: redis-py's errors, the socket's, or a read of a
# socket already closed (ValueError).
_LOST = (redis.RedisError, OSError, ValueError)
# Plain pub/sub on one Redis, sharded pub/sub on a cluster (gateway/cluster_hub.py).
_CONFIRMATIONS = frozenset(("subscribe", "ssubscribe"))
_MESSAGES = frozenset(("message", "smessage"))


# Messages one burst dispatches before the reader looks at Redis again; bounds a socket's held frames.
MAX_BURST = 64


class Corkable(Protocol):
    def cork(self) -> None: ...

    def uncork(self) -> None: ...


class Subscriber(Protocol):
    @property
    def transport(self) -> Corkable: ...

    def deliver(self, channel: str, out: Outgoing) -> None: ...

    def hold(self, channel: str) -> None: ...


class Hub:
    def __init__(self, redis_client: redis.Redis, *, confirm_timeout_s: float = 5.0,
                 reconnect_backoff_s: float = 0.5, history_events: int = MAX_EVENTS_PER_CHANNEL) -> None:
        self.redis = redis_client
        self.confirm_timeout_s = confirm_timeout_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.history_events = history_events
        self.channels: dict[str, set[Subscriber]] = {}
        # The stored events of each held channel, complete over a known range (gateway.history).
        self.histories: dict[str, ChannelHistory] = {}
        self._confirmed: dict[str, GEvent] = {}
        # SUBSCRIBEs sent per channel and not answered yet: only the reply to the last one confirms
        # (an older reply may precede an UNSUBSCRIBE that a quick resubscribe then undoes).
        self._unanswered: dict[str, int] = {}
        self._pubsub: Any = None
        self._changes = PendingChanges()
        self._reader: gevent.Greenlet | None = None
        self._running = False
        self.healthy = GEvent()
        self.messages_in = 0
        self.frames_out = 0
        self.on_reconnect: Callable[[], None] | None = None
        # Told of each order event on a `driver:*` channel (a restaurant may have lost its view).
        self.on_driver_order_event: Callable[[str, Outgoing], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._reader = gevent.spawn(self._read_forever)

    def stop(self) -> None:
        self._running = False
        if self._reader is not None:
            self._reader.kill(block=True, timeout=2)
        self._close_pubsub()

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError):
                pass
            self._pubsub = None

    # -- subscriptions -------------------------------------------------------------------------
    def add(self, subscriber: Subscriber, channel: str) -> None:
        """Register locally; return once Redis has confirmed the upstream subscription."""
        local = self.channels.setdefault(channel, set())
        local.add(subscriber)
        if channel not in self.histories:
            self.histories[channel] = ChannelHistory(max_events=self.history_events)
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = GEvent()
            self._subscribe_upstream(channel)
        if not confirmed.wait(timeout=self.confirm_timeout_s):
            raise Unavailable("the event stream is unavailable, retry shortly")

    def anchor_history(self, channel: str, read_watermark: Callable[[], int]) -> int:
        """Read the relay's watermark for a held channel and anchor its history there.

        Only a subscription confirmed before the read anchors: a reconnect in between resets the
        history and bumps its generation, and the stale anchor is ignored (`ChannelHistory.anchor`).
        """
        history = self.histories.get(channel)
        confirmed = self._confirmed.get(channel)
        generation = history.generation if history is not None and confirmed is not None and \
            confirmed.is_set() else None
        watermark = read_watermark()
        if history is not None and generation is not None:
            history.anchor(watermark, generation=generation)
        return watermark

    def remove(self, subscriber: Subscriber, channel: str) -> None:
        local = self.channels.get(channel)
        if local is None:
            return
        local.discard(subscriber)
        if not local:
            del self.channels[channel]
            self.histories.pop(channel, None)
            self._confirmed.pop(channel, None)
            self._unsubscribe_upstream(channel)

    def _subscribe_upstream(self, channel: str) -> None:
        """Have the reader ask Redis for `channel`; the confirmation arrives through `_dispatch`."""
        self._changes.mark(channel)

    def _unsubscribe_upstream(self, channel: str) -> None:
        self._changes.mark(channel)

    def _apply_changes(self) -> None:
        """In the reader: (un)subscribe the marked channels as `self.channels` now wants them."""
        changed = self._changes.take()
        if not changed:
            return
        wanted = [channel for channel in changed if channel in self.channels]
        unwanted = [REDIS_PREFIX + channel for channel in changed if channel not in self.channels]
        if wanted:
            self._sent_subscribe(wanted)
            self._pubsub.subscribe(*[REDIS_PREFIX + channel for channel in wanted])
        if unwanted:
            self._pubsub.unsubscribe(*unwanted)

    def _sent_subscribe(self, channels: list[str]) -> None:
        for channel in channels:
            self._unanswered[channel] = self._unanswered.get(channel, 0) + 1

    def _answered(self, channel: str) -> bool:
        """A subscribe reply for `channel` came: is the subscription Redis holds now the one wanted?

        Yes when it answers the last SUBSCRIBE sent and no change to the channel waits to be sent.
        """
        left = self._unanswered.pop(channel, 0) - 1
        if left > 0:
            self._unanswered[channel] = left
            return False
        return not self._change_pending(channel)

    def _change_pending(self, channel: str) -> bool:
        return channel in self._changes

    def publish_ephemeral(self, channel: str, frame: str) -> None:
        """Events that are not stored (locations, stats) go straight to Redis with no id."""
        publish_ephemeral(self.redis, channel, frame)

    # -- the reader ----------------------------------------------------------------------------
    def _connect(self) -> None:
        self._close_pubsub()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        # The reader blocks in get_message, so it must not time out on a quiet line.
        pubsub.ping()
        self._pubsub = pubsub
        for confirmed in self._confirmed.values():
            confirmed.clear()
        for history in self.histories.values():
            history.reset()  # what was published while the subscription was down is unknown
        self._changes.take()  # every held channel is subscribed now, marked or not
        self._unanswered = dict.fromkeys(self.channels, 1)  # the old connection's replies never come
        # redis-py reads only while subscribed to something: a private no-op channel keeps it so
        # when the last client channel goes.
        pubsub.subscribe(REDIS_PREFIX + "-hub-idle", *[REDIS_PREFIX + channel for channel in self.channels])
        self.healthy.set()

    def _read_forever(self) -> None:
        first = True
        while self._running:
            try:
                self._connect()
                if not first:
                    logger.info("hub reconnected to Redis; resynchronising subscribers")
                    if self.on_reconnect is not None:
                        gevent.spawn(self._await_then_resync)
                first = False
                while self._running:
                    self._apply_changes()
                    message = self._pubsub.get_message(timeout=0.0)
                    if message is None or self._dispatch_burst(message):
                        # Nothing left in redis-py's buffer: wait for bytes or a mark.
                        self._changes.wait(self._pubsub, timeout_s=1.0)
            except (*_LOST, AttributeError) as exc:
                self.healthy.clear()
                self._hold(list(self.channels))
                RECONNECTS.labels("hub", "redis").inc()
                logger.warning("hub lost Redis: {}: {}", type(exc).__name__, exc)
                gevent.sleep(self.reconnect_backoff_s)

    def _hold(self, channels: list[str]) -> None:
        """These channels lost their upstream subscription: their subscribers buffer until resynced."""
        for channel in channels:
            for subscriber in list(self.channels.get(channel, ())):
                subscriber.hold(channel)

    def _await_then_resync(self) -> None:
        for confirmed in list(self._confirmed.values()):
            confirmed.wait(timeout=self.confirm_timeout_s)
        assert self.on_reconnect is not None
        self.on_reconnect()

    def _dispatch_burst(self, first: dict[str, Any]) -> bool:
        """Dispatch `first` and every message already read behind it, each socket written once.

        When events arrive faster than one loop turn (a relay's pipelined burst, a hub catching
        up), each subscriber's frames of the burst are corked and leave in one send: one syscall
        and one wake-up of the proxy and the client per burst instead of per event, which is when
        it matters. A lone message goes out at once, as before. True when the burst ended on an
        empty read (the reader may wait without reading again), False when it stopped at MAX_BURST.
        """
        more = self._pubsub.get_message(timeout=0.0)
        if more is None:
            self._dispatch(first)
            return True
        corked: dict[int, Subscriber] = {}
        count = 2
        drained = True
        try:
            self._dispatch(first, corked)
            while more is not None:
                self._dispatch(more, corked)
                if count < MAX_BURST:
                    more = self._pubsub.get_message(timeout=0.0)
                else:
                    more, drained = None, False
                count += 1
            return drained
        finally:
            for subscriber in corked.values():
                subscriber.transport.uncork()
            BURSTS.inc()
            BURST_MESSAGES.inc(count - 1)

    def _dispatch(self, message: dict[str, Any], corked: dict[int, Subscriber] | None = None) -> None:
        kind = message.get("type")
        raw_channel = message.get("channel")
        if not isinstance(raw_channel, str) or not raw_channel.startswith(REDIS_PREFIX):
            return
        channel = raw_channel[len(REDIS_PREFIX):]
        if kind in _CONFIRMATIONS:
            confirmed = self._confirmed.get(channel)
            if self._answered(channel) and confirmed is not None:
                confirmed.set()
            return
        if kind not in _MESSAGES:
            return
        self.messages_in += 1
        event_id, frame = outbox.decode(str(message["data"]))
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        out = Outgoing.of(event_id, frame, visibility.tag_driver_event(channel, frame) if event_id is not None
                          else None)
        if event_id is not None:
            self.histories[channel].append(out)
        for subscriber in list(subscribers):
            if corked is not None and id(subscriber) not in corked:
                subscriber.transport.cork()
                corked[id(subscriber)] = subscriber
            subscriber.deliver(channel, out)
        self.frames_out += len(subscribers)
        if out.tag is not None and self.on_driver_order_event is not None:
            self.on_driver_order_event(channel, out)
        if event_id is not None and self.messages_in % DELIVERY_SAMPLE_EVERY == 0:
            observe_delivery(frame)  # sampled: it parses the frame the fan-out passes on unread

