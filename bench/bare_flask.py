"""The framework's ceiling: Flask under the same gevent WSGI server as the API, one route, 20 JSON items.

`python -m bench.bare_flask PORT` serves `GET /items` until SIGTERM. No database, no Redis, no
hooks: whatever the API costs above this is ours.
"""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from flask import Flask, jsonify  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

ITEMS = [{"id": f"00000000-0000-0000-0000-{n:012d}", "name": f"product {n}", "category": "produce",
          "unit": "each", "price": f"{n}.50", "active": True} for n in range(20)]


def make_app() -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/items")
    def items() -> Any:
        return jsonify({"items": ITEMS, "next_cursor": None})

    return app


def main() -> int:
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), make_app(), spawn=Pool(), log=None, error_log=None)
    server.init_socket()
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
