"""The peer: a Flask-SocketIO server under gevent with its Redis message queue, rooms per channel.

`python -m bench.peer.socketio_server`; clients connect with `?token=JWT`, emit
`subscribe {channel}` (acknowledged) and receive `event` messages that a feeder process emits
to the room through the same Redis queue. It runs under gevent.pywsgi as our gateway does (which
speaks WebSocket itself, gateway/framing.py and gateway/transport.py), so both servers share one
event loop and HTTP layer.
"""

from gevent import monkey

monkey.patch_all()  # first, before redis is imported

import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO, join_room  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from bench.peer.emitters import QUEUE_CHANNEL  # noqa: E402
from common.auth import verify_token  # noqa: E402
from common.errors import Unauthorized  # noqa: E402


def create_app(redis_url: str, secret: str) -> tuple[Flask, SocketIO]:
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="gevent", message_queue=redis_url, channel=QUEUE_CHANNEL,
                        cors_allowed_origins="*", ping_interval=60, ping_timeout=30, logger=False,
                        engineio_logger=False)

    @socketio.on("connect")
    def connect(_auth: Any = None) -> bool:
        try:
            verify_token(request.args.get("token", ""), secret)
        except Unauthorized:
            return False
        return True

    @socketio.on("subscribe")
    def subscribe(body: dict[str, Any]) -> dict[str, Any]:
        join_room(body["channel"])
        return {"subscribed": body["channel"]}

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "ok"})

    return app, socketio


def main() -> int:
    app, _ = create_app(os.environ["REDIS_URL"], os.environ["JWT_SECRET"])
    port = int(os.environ.get("PEER_PORT", "8101"))
    server = WSGIServer(("127.0.0.1", port), app, log=None, error_log=None)
    print(f"socket.io peer on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
