"""One relay batch to a single Redis node: its PUBLISHes and the watermark SET in one MULTI/EXEC.

The block is packed into one buffer and written in one send; the replies (MULTI's OK, one
QUEUED per command, EXEC's results) are read after. redis-py's pipeline does the same exchange
but packs and parses each command through its generic machinery, which was a third of the relay's
CPU per event (docs/perf/relay-ceiling-profile.md). The atomicity is what matters: a gateway
that subscribes and then reads the watermark sees either the whole batch live or a watermark that
covers it, never neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def pack_batch(messages: Sequence[tuple[str, str]], *, watermark_key: str, watermark: int) -> bytes:
    """MULTI, `PUBLISH channel message` for each pair in order, `SET watermark_key watermark`, EXEC."""
    parts = [_MULTI]
    for channel, message in messages:
        name, body = channel.encode(), message.encode()
        parts.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(body), body))
    parts.append(_command(b"SET", watermark_key.encode(), str(watermark).encode()))
    parts.append(_EXEC)
    return b"".join(parts)


def publish_batch(client: redis.Redis, messages: Sequence[tuple[str, str]], *, watermark_key: str,
                  watermark: int) -> None:
    """Send the batch as one MULTI/EXEC and wait until Redis has run it; raise a RedisError if not."""
    block = pack_batch(messages, watermark_key=watermark_key, watermark=watermark)
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([block])
        for _ in range(len(messages) + 2):  # MULTI's OK, then QUEUED per PUBLISH and for the SET
            connection.read_response()
        results = connection.read_response()  # EXEC: raises ExecAbortError if a command was refused
        if not isinstance(results, list) or len(results) != len(messages) + 1:
            raise redis.ResponseError(f"EXEC answered {type(results).__name__}, not {len(messages) + 1} results")
    except BaseException:
        # Replies may be left unread on the socket: the connection must not serve anyone else.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
