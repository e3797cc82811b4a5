"""How an event reaches each system's servers through Redis, in that system's own wire format.

The feeder (outbox rows) and the direct source (`--source redis`) both call `Emitter.emit`; only
the Redis message differs: our relay's `id|frame` per channel, python-socketio's RedisManager,
and @socket.io/redis-adapter's MessagePack `[uid, packet, opts]` on its per-room channel.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Protocol

QUEUE_CHANNEL = "dms-bench-socketio"  # the Flask-SocketIO peer's message-queue channel
NODE_ADAPTER_PREFIX = "socket.io#/#"  # @socket.io/redis-adapter: key "socket.io", namespace "/"
NODE_EMITTER_UID = "dms-bench"  # any uid other than the server's own, so the server does not skip it


class Emitter(Protocol):
    def prepare(self, last_id: int) -> None:
        """Whatever the system needs before the first event: the position a relay would have published."""

    def emit(self, event: dict[str, Any]) -> None:
        """Send one event (id, event, data, ts, channels) to every server of the system."""


def payload(event: dict[str, Any], channel: str) -> dict[str, Any]:
    """The event as our contract frames it; the peers carry the same dict as their message body."""
    return {"type": "event", "channel": channel, "id": event["id"], "event": event["event"], "data": event["data"],
            "ts": event["ts"]}


class DmsEmitter:
    """What our relay publishes: `id|frame` on `dms:ch:<channel>`, watermark in the same transaction."""

    def __init__(self, redis_client: Any) -> None:
        from common.events import REDIS_PREFIX, RELAY_WATERMARK_KEY

        self.redis, self.prefix, self.watermark = redis_client, REDIS_PREFIX, RELAY_WATERMARK_KEY

    def prepare(self, last_id: int) -> None:
        # With no relay running, subscribes wait for this key (the relay's published position).
        self.redis.set(self.watermark, last_id)

    def emit(self, event: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for channel in event["channels"]:
            frame = json.dumps(payload(event, channel), separators=(",", ":"))
            pipe.publish(self.prefix + channel, f"{event['id']}|{frame}")
        pipe.set(self.watermark, event["id"])
        pipe.execute()


class SocketIOEmitter:
    """python-socketio's write-only RedisManager: what a Flask-SocketIO app's workers would use."""

    def __init__(self, redis_url: str) -> None:
        import socketio

        self.manager = socketio.RedisManager(redis_url, channel=QUEUE_CHANNEL, write_only=True)

    def prepare(self, last_id: int) -> None:
        pass

    def emit(self, event: dict[str, Any]) -> None:
        for channel in event["channels"]:
            self.manager.emit("event", payload(event, channel), room=channel, namespace="/")


class NodeAdapterEmitter:
    """The broadcast message @socket.io/redis-adapter 8 publishes for `io.to(room).emit(...)`."""

    def __init__(self, redis_client: Any) -> None:
        self.redis = redis_client

    def prepare(self, last_id: int) -> None:
        pass

    def emit(self, event: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for channel in event["channels"]:
            packet = {"type": 2, "data": ["event", payload(event, channel)], "nsp": "/"}
            opts = {"rooms": [channel], "except": [], "flags": {}}
            pipe.publish(f"{NODE_ADAPTER_PREFIX}{channel}#", msgpack([NODE_EMITTER_UID, packet, opts]))
        pipe.execute()


def make_emitter(system: str, redis_url: str) -> Emitter:
    from common.redis_client import make_redis

    if system in ("dms", "dms-relay-inside", "dms-2"):
        return DmsEmitter(make_redis(redis_url))
    if system == "flask-socketio":
        return SocketIOEmitter(redis_url)
    if system == "node-socketio":
        return NodeAdapterEmitter(make_redis(redis_url))
    raise ValueError(f"unknown system {system!r}")


def msgpack(value: Any) -> bytes:
    """MessagePack for JSON-shaped values: the adapter's wire format, ~30 lines instead of a dependency."""
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xC0)
    elif value is True or value is False:
        out.append(0xC3 if value else 0xC2)
    elif isinstance(value, int):
        if 0 <= value < 0x80:
            out.append(value)
        elif -32 <= value < 0:
            out.append(value & 0xFF)
        elif 0 <= value < 2**32:
            out += struct.pack(">BI", 0xCE, value)
        else:
            out += struct.pack(">Bq", 0xD3, value)
    elif isinstance(value, float):
        out += struct.pack(">Bd", 0xCB, value)
    elif isinstance(value, str):
        raw = value.encode()
        _head(len(raw), out, fix=(0xA0, 32), small=0xD9, mid=0xDA, big=0xDB)
        out += raw
    elif isinstance(value, list | tuple):
        _head(len(value), out, fix=(0x90, 16), small=None, mid=0xDC, big=0xDD)
        for item in value:
            _pack(item, out)
    elif isinstance(value, dict):
        _head(len(value), out, fix=(0x80, 16), small=None, mid=0xDE, big=0xDF)
        for key, item in value.items():
            _pack(str(key), out)
            _pack(item, out)
    else:
        raise TypeError(f"cannot pack {type(value).__name__}")


def _head(length: int, out: bytearray, *, fix: tuple[int, int], small: int | None, mid: int, big: int) -> None:
    if length < fix[1]:
        out.append(fix[0] | length)
    elif small is not None and length < 0x100:
        out += struct.pack(">BB", small, length)
    elif length < 0x10000:
        out += struct.pack(">BH", mid, length)
    else:
        out += struct.pack(">BI", big, length)
