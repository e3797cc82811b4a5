"""A peer's relay: LISTEN for outbox ids, read the rows, emit each to its rooms through the peer's Redis path.

`python -m bench.peer.feeder` with PEER_SYSTEM (`flask-socketio` or `node-socketio`). Simpler than
our relay (no leader lock, no watermark) but it must not lose events either: the API commits
concurrently, so ids can become visible out of order. The feeder emits the contiguous prefix and
holds at a hole for up to GAP_WAIT_S (a rolled-back insert leaves a hole that never fills).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from bench.peer.emitters import make_emitter
from common.db import connect
from common.events import NOTIFY_CHANNEL, iso

BATCH = 500
GAP_WAIT_S = 2.0
GAP_POLL_S = 0.005


def main() -> int:
    system = os.environ.get("PEER_SYSTEM", "flask-socketio")
    emitter = make_emitter(system, os.environ["REDIS_URL"])
    conn = connect(os.environ["DATABASE_URL"], autocommit=True)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
    last_id = int(row["id"]) if row else 0
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    print(f"{system} feeder from event {last_id}", file=sys.stderr, flush=True)
    gap_since: float | None = None
    while running:
        rows = conn.execute("SELECT id, channels, event, data, created_at FROM events WHERE id > %s ORDER BY id"
                            " LIMIT %s", (last_id, BATCH)).fetchall()
        blocked = False
        for event in rows:
            event_id = int(event["id"])
            if event_id != last_id + 1:
                gap_since = gap_since or time.monotonic()
                if time.monotonic() - gap_since < GAP_WAIT_S:
                    blocked = True  # an earlier id may still commit: wait for it, in order
                    break
            gap_since = None
            emitter.emit({"id": event_id, "event": event["event"], "data": event["data"],
                          "ts": iso(event["created_at"]), "channels": list(event["channels"])})
            last_id = event_id
        if blocked:
            time.sleep(GAP_POLL_S)
        elif len(rows) < BATCH:
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                pass
    conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
