"""The hub's confirmation rule: a channel is confirmed by the reply to the last SUBSCRIBE sent for it.

Redis answers commands in order, so when a client unsubscribes and at once subscribes again, the
reply to the first SUBSCRIBE can arrive after the second was asked for, before Redis has run the
UNSUBSCRIBE and the new SUBSCRIBE. Confirming on it would let events published in between go
unseen. These drive the rule with the replies Redis would send; no connection is needed.
"""

from __future__ import annotations

from gevent.event import Event

from common.events import REDIS_PREFIX
from gateway.cluster_hub import ClusterHub, ShardLink
from gateway.hub import Hub

CHANNEL = "restaurant:confirmations"


def _reply(hub: Hub, kind: str = "subscribe") -> None:
    hub._dispatch({"type": kind, "channel": REDIS_PREFIX + CHANNEL, "data": 1})


def _waiting(hub: Hub) -> Event:
    confirmed = hub._confirmed[CHANNEL] = Event()
    return confirmed


def test_one_subscribe_is_confirmed_by_its_reply() -> None:
    hub = Hub(None)  # type: ignore[arg-type]  # the rule never touches Redis
    confirmed = _waiting(hub)
    hub._sent_subscribe([CHANNEL])
    _reply(hub)
    assert confirmed.is_set()


def test_a_resubscribe_is_not_confirmed_by_the_first_subscribes_reply() -> None:
    hub = Hub(None)  # type: ignore[arg-type]
    hub._sent_subscribe([CHANNEL])  # first subscriber; then it left and the UNSUBSCRIBE went out
    confirmed = _waiting(hub)  # a new subscriber arrived
    hub._sent_subscribe([CHANNEL])
    _reply(hub)  # answers the first SUBSCRIBE
    _reply(hub, "unsubscribe")
    assert not confirmed.is_set()
    _reply(hub)  # answers the second
    assert confirmed.is_set()


def test_a_reply_is_not_a_confirmation_while_a_change_waits_to_be_sent() -> None:
    hub = Hub(None)  # type: ignore[arg-type]
    hub._sent_subscribe([CHANNEL])
    confirmed = _waiting(hub)
    hub._changes.mark(CHANNEL)  # left and came back before the reader applied anything
    _reply(hub)
    assert not confirmed.is_set()
    assert hub._changes.take() == {CHANNEL}  # the reader now sends its SUBSCRIBE
    hub._sent_subscribe([CHANNEL])
    _reply(hub)
    assert confirmed.is_set()


def test_a_lost_shard_link_forgets_the_replies_it_owed() -> None:
    """A link that dies with SSUBSCRIBEs unanswered, even for channels it no longer held, must not
    leave the count waiting for replies that never come: the next subscription would hang."""
    hub = ClusterHub(None, ("127.0.0.1:1",))  # type: ignore[arg-type]
    hub._running = True
    link = ShardLink(hub, ("127.0.0.1", 1))
    link.sent.add(CHANNEL)
    hub._sent_subscribe([CHANNEL])  # sent on the link, then dropped from it before the reply
    hub._link_lost(link, ConnectionError("gone"))
    confirmed = _waiting(hub)
    hub._sent_subscribe([CHANNEL])  # a later subscribe, on the channel's new owner
    _reply(hub, "ssubscribe")
    assert confirmed.is_set()
