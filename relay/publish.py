"""One relay batch to a single Redis node: its PUBLISHes in order and the watermark SET, atomically.

Atomic is the point: a gateway that subscribes and then reads the watermark sees either the whole
batch live or a watermark that covers it, never neither. MULTI/EXEC gives that. Its replies are
the cost: OK, then QUEUED for each command, then every command's result, and redis-py parsing
them (and packing each command argument by argument) was a third of the relay's CPU per event
(docs/perf/relay-ceiling-profile.md). So the whole exchange is packed here into one buffer,
written in one send, with replies switched off around the transaction:

    CLIENT REPLY OFF, MULTI, PUBLISH ... PUBLISH, SET watermark N, EXEC, CLIENT REPLY ON, GET watermark

Two replies come back: ON's OK and the watermark. The SET runs inside the transaction, so reading
N back proves EXEC ran every command; an aborted transaction (a command refused as it was queued)
leaves the old watermark, below N, because a leader's watermark only grows between its batches.

A Lua script doing the same loop answers once too, but Redis interns every argument as a Lua
string, and frames that differ in a few bytes collide in its string hash: ten times the Redis CPU
per message of MULTI (measured), on the node every gateway reads from.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

_QUIET_MULTI = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n*1\r\n$5\r\nMULTI\r\n"
_EXEC_AND_REPLY = b"*1\r\n$4\r\nEXEC\r\n*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$2\r\nON\r\n"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_batch(messages: Sequence[tuple[str, str]], *, watermark_key: str, watermark: int) -> bytes:
    """The whole exchange above as one buffer of RESP commands, `messages` published in order."""
    parts = [_QUIET_MULTI]
    for channel, message in messages:
        name, body = channel.encode(), message.encode()
        parts.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(body), body))
    key, mark = watermark_key.encode(), str(watermark).encode()
    parts.append(b"*3\r\n$3\r\nSET\r\n" + _bulk(key) + _bulk(mark))
    parts.append(_EXEC_AND_REPLY)
    parts.append(b"*2\r\n$3\r\nGET\r\n" + _bulk(key))
    return b"".join(parts)


def publish_batch(client: redis.Redis, messages: Sequence[tuple[str, str]], *, watermark_key: str,
                  watermark: int) -> None:
    """Publish `messages` in order and set the watermark in one transaction; raise a RedisError if not."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([pack_batch(messages, watermark_key=watermark_key, watermark=watermark)])
        connection.read_response()  # CLIENT REPLY ON's OK
        stored = connection.read_response()
        if (stored.decode() if isinstance(stored, bytes) else stored) != str(watermark):
            raise redis.ResponseError(f"the batch up to {watermark} was not applied (watermark {stored!r})")
    except BaseException:
        # Replies may be left unread, or switched off, on this connection: it must not serve anyone else.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
