"""The framework's ceiling: Flask under the same gevent WSGI server as the API, one route.

`python -m bench.bare_flask PORT [PAGES]` serves `GET /items` until SIGTERM. With PAGES (a JSON
file of category -> catalogue page, as `GET /api/products?limit=50&category=...` answers it),
`/items?category=...` answers that category's page: the same products, serialised with `jsonify`
on every request as a plain Flask route holding the data in memory would. Without it, 20 small
items. No database, no Redis, no hooks: whatever the API costs above this is ours.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

ITEMS = [{"id": f"00000000-0000-0000-0000-{n:012d}", "name": f"product {n}", "category": "produce",
          "unit": "each", "price": f"{n}.50", "active": True} for n in range(20)]


def make_app(pages: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    default = {"items": ITEMS, "next_cursor": None}

    @app.get("/items")
    def items() -> Any:
        return jsonify(pages.get(request.args.get("category", ""), default) if pages else default)

    return app


def main() -> int:
    pages = None
    if len(sys.argv) > 2:
        with open(sys.argv[2], encoding="utf-8") as source:
            pages = json.load(source)
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), make_app(pages), spawn=Pool(), log=None,
                        error_log=None)
    server.init_socket()
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
