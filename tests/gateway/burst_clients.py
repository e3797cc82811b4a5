"""A process of many WebSocket clients for the burst tests: connect all, then subscribe all at once.

Run as `python -m tests.gateway.burst_clients CONFIG_JSON`. Each client connects (a refused
handshake is retried after its `Retry-After`, as the contract asks of clients), reads its
`welcome` and prints nothing; once all are in, the process prints `connected N` and waits for
`go` on stdin. Then every client sends one `subscribe` in the same moment, and the process
prints one JSON line: how many got `subscribed`, and every error code with its count.
"""

from gevent import monkey

monkey.patch_all()  # first: websocket-client must see gevent's sockets

import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import websocket  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

from common.auth import mint_token  # noqa: E402

CONNECT_CONCURRENCY = 200


def _connect(url: str, token: str, deadline: float, refusals: Counter[str]) -> websocket.WebSocket:
    while True:
        try:
            return websocket.create_connection(f"{url}?token={token}", timeout=60)
        except websocket.WebSocketBadStatusException as exc:
            refusals[str(exc.status_code)] += 1
            headers = exc.resp_headers or {}
            wait_s = float(headers.get("retry-after", headers.get("Retry-After", "1")))
        except OSError:
            refusals["connect"] += 1
            wait_s = 0.5
        if time.monotonic() + wait_s > deadline:
            raise TimeoutError("could not connect before the deadline")
        gevent.sleep(wait_s * (1 + random.random()))


def main() -> int:
    config: dict[str, Any] = json.loads(sys.argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    restaurants: list[str] = config["restaurants"]
    deadline = time.monotonic() + float(config.get("connect_timeout_s", 120))
    gate = BoundedSemaphore(CONNECT_CONCURRENCY)
    refusals: Counter[str] = Counter()
    sockets: list[tuple[websocket.WebSocket, str]] = []
    failed = 0

    def connect_one(index: int) -> None:
        nonlocal failed
        restaurant = restaurants[index % len(restaurants)]
        token = mint_token(config["secret"], role=config.get("role", "restaurant"), sub=str(uuid.uuid4()),
                           restaurant_id=restaurant)
        with gate:
            try:
                ws = _connect(config["url"], token, deadline, refusals)
                welcome = json.loads(ws.recv())
                assert welcome["type"] == "welcome", welcome
            except (TimeoutError, OSError, websocket.WebSocketException, AssertionError):
                failed += 1
                return
        sockets.append((ws, f"restaurant:{restaurant}"))

    gevent.joinall([gevent.spawn(connect_one, index) for index in range(int(config["clients"]))])
    print(f"connected {len(sockets)} failed {failed} refusals {json.dumps(dict(refusals))}", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    start = Event()
    answers: Counter[str] = Counter()

    def subscribe_one(ws: websocket.WebSocket, channel: str) -> None:
        start.wait()
        try:
            ws.send(json.dumps({"type": "subscribe", "channel": channel, "ref": "s"}))
            while True:
                body = json.loads(ws.recv())
                if body.get("type") == "subscribed":
                    answers["subscribed"] += 1
                    return
                if body.get("type") == "error":
                    answers[f"error:{body.get('code')}:{body.get('message')}"] += 1
                    return
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            answers[f"lost:{type(exc).__name__}"] += 1

    greenlets = [gevent.spawn(subscribe_one, ws, channel) for ws, channel in sockets]
    gevent.sleep(0)
    start.set()
    gevent.joinall(greenlets, timeout=float(config.get("subscribe_timeout_s", 120)))
    answers["unanswered"] = sum(1 for greenlet in greenlets if not greenlet.dead)
    print(json.dumps(dict(answers)), flush=True)
    for ws, _ in sockets:
        try:
            ws.close(timeout=0)
        except (OSError, websocket.WebSocketException):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
