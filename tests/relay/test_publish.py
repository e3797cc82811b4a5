"""One relay batch to Redis: PUBLISHes in order and the watermark, atomically, in one write."""

from __future__ import annotations

import pytest
import redis

from common.redis_client import ROUND_TRIPS, make_redis
from relay.publish import pack_batch, publish_batch
from tests.helpers import wait_for


def test_the_batch_is_one_quiet_transaction_then_the_watermark_read_back() -> None:
    block = pack_batch([("dms:ch:a", "1|x"), ("dms:ch:b", "2|é")], watermark_key="wm", watermark=2)
    assert block == (b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n*1\r\n$5\r\nMULTI\r\n"
                     b"*3\r\n$7\r\nPUBLISH\r\n$8\r\ndms:ch:a\r\n$3\r\n1|x\r\n"
                     b"*3\r\n$7\r\nPUBLISH\r\n$8\r\ndms:ch:b\r\n$4\r\n2|\xc3\xa9\r\n"  # lengths in bytes
                     b"*3\r\n$3\r\nSET\r\n$2\r\nwm\r\n$1\r\n2\r\n"
                     b"*1\r\n$4\r\nEXEC\r\n*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$2\r\nON\r\n"
                     b"*2\r\n$3\r\nGET\r\n$2\r\nwm\r\n")


def test_a_batch_arrives_in_order_with_its_watermark_in_one_round_trip(own_redis: str) -> None:
    client = make_redis(own_redis)
    listener = redis.Redis.from_url(own_redis).pubsub()
    listener.subscribe("dms:ch:a", "dms:ch:b")
    wait_for(lambda: listener.get_message(timeout=0.1) is None and len(client.pubsub_channels("dms:ch:*")) == 2,
             message="both subscriptions in place")
    messages = [("dms:ch:a" if n % 2 else "dms:ch:b", f"{n}|frame {n}") for n in range(1, 1001)]
    trips = ROUND_TRIPS._value.get()
    publish_batch(client, messages, watermark_key="wm", watermark=1000)
    assert ROUND_TRIPS._value.get() - trips == 1
    assert client.get("wm") == "1000"
    received: list[tuple[str, str]] = []

    def all_in() -> bool:
        while (message := listener.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            received.append((message["channel"].decode(), message["data"].decode()))
        return len(received) == len(messages)

    assert wait_for(all_in, message="every message delivered")
    assert received == messages
    # The connection went back to the pool clean: an ordinary command on it still works.
    assert client.ping() is True
    listener.close()


def test_a_refused_batch_raises_publishes_nothing_and_leaves_the_pool_clean(own_redis: str) -> None:
    admin = redis.Redis.from_url(own_redis)
    admin.set("wm", 5)
    # A user that may not PUBLISH: Redis refuses those commands as they are queued, so EXEC aborts.
    admin.acl_setuser("no-publish", enabled=True, nopass=True, categories=["+@all"], commands=["-publish"],
                      keys=["*"], channels=["*"])
    client = make_redis(own_redis.replace("redis://", "redis://no-publish:any@"))
    listener = admin.pubsub()
    listener.subscribe("dms:ch:a")
    wait_for(lambda: listener.get_message(timeout=0.1) is None and admin.pubsub_numsub("dms:ch:a")[0][1] == 1,
             message="subscribed")
    with pytest.raises(redis.ResponseError):
        publish_batch(client, [("dms:ch:a", "6|x"), ("dms:ch:a", "7|y")], watermark_key="wm", watermark=7)
    assert admin.get("wm") == b"5"
    assert listener.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    assert client.ping() is True  # the half-read connection was dropped, not handed to the next caller
    listener.close()
