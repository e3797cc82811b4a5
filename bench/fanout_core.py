"""The fan-out alone: CPU per delivery of `Hub._dispatch` to N connections on socketpairs.

No server, no clients, no Redis: one pre-framed event handed to every subscriber's transport, timed
with process_time; the peers are drained between events outside the timed part.
`python -m bench.fanout_core [--subscribers N] [--events M]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import uuid

from gevent import socket as gsocket

from common.auth import Identity
from gateway.connection import Connection, Subscription
from gateway.history import ChannelHistory
from gateway.hub import Hub
from gateway.protocol import Session
from gateway.transport import Transport

CHANNEL = "restaurant:bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hub = Hub(None)  # type: ignore[arg-type]  # _dispatch never touches Redis
    hub.histories[CHANNEL] = ChannelHistory()  # what hub.add makes for a held channel
    peers = []
    for n in range(args.subscribers):
        ours, peer = gsocket.socketpair()
        who = Identity(user_id=str(uuid.uuid4()), role="admin", restaurant_id=None, expires_at=time.time() + 3600)
        conn = Connection(connection_id=str(n), identity=who, transport=Transport(ours), session=Session(role="admin"))
        conn.subscriptions[CHANNEL] = Subscription(last_id=0, buffer=None)
        hub.channels.setdefault(CHANNEL, set()).add(conn)
        peers.append(peer)
    data = {"order_id": str(uuid.uuid4()), "restaurant_id": str(uuid.uuid4()), "status": "preparing",
            "previous_status": "confirmed", "driver_id": None, "version": 3, "total_amount": "123.45",
            "updated_at": "2024-01-01T00:00:00Z", "request_id": "bench"}
    spent, size = 0.0, 0
    for event_id in range(1, args.events + 1):
        frame = json.dumps({"type": "event", "channel": CHANNEL, "id": event_id, "event": "order.status_changed",
                            "data": data, "ts": "2024-01-01T00:00:00Z"}, separators=(",", ":"))
        size = len(frame)
        message = {"type": "message", "channel": "dms:ch:" + CHANNEL, "data": f"{event_id}|{frame}"}
        started = time.process_time()
        hub._dispatch(message)
        spent += time.process_time() - started
        for peer in peers:
            peer.recv(1 << 16)
    per_delivery_us = spent / (args.subscribers * args.events) * 1e6
    print(f"{args.subscribers} subscribers x {args.events} events of {size} bytes: {per_delivery_us:.2f} us CPU per "
          f"delivery ({per_delivery_us:.2f} ms per 1,000 deliveries), fan-out only")


if __name__ == "__main__":
    main()
