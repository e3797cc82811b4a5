"""The peer's relay: LISTEN for outbox ids, read the rows, emit each to its rooms via the Redis queue.

`python -m bench.peer.feeder`. Deliberately simpler than our relay (no gap waiting, no leader
lock): in the benchmark one writer commits in id order, so nothing is skipped, and the peer is
not charged for guarantees it does not give.
"""

from __future__ import annotations

import os
import signal
import sys

import socketio

from bench.peer.socketio_server import QUEUE_CHANNEL
from common.db import connect
from common.events import NOTIFY_CHANNEL, iso


def main() -> int:
    manager = socketio.RedisManager(os.environ["REDIS_URL"], channel=QUEUE_CHANNEL, write_only=True)
    conn = connect(os.environ["DATABASE_URL"], autocommit=True)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
    last_id = int(row["id"]) if row else 0
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    print(f"feeder from event {last_id}", file=sys.stderr, flush=True)
    while running:
        rows = conn.execute("SELECT id, channels, event, data, created_at FROM events WHERE id > %s ORDER BY id"
                            " LIMIT 500", (last_id,)).fetchall()
        for event in rows:
            for channel in event["channels"]:
                manager.emit("event", {"type": "event", "channel": channel, "id": event["id"],
                                       "event": event["event"], "data": event["data"],
                                       "ts": iso(event["created_at"])}, room=channel, namespace="/")
            last_id = int(event["id"])
        if len(rows) < 500:
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                pass
    conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
