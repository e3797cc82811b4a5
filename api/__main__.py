"""`python -m api`: the REST API under gevent's WSGI server."""

from gevent import monkey

monkey.patch_all()  # first, before psycopg, redis or ssl are imported

import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from loguru import logger  # noqa: E402

from api.app import create_app  # noqa: E402
from api.cache import HITS_KEY  # noqa: E402
from api.near_cache import run_listener  # noqa: E402
from api.performance import run_sampler  # noqa: E402
from api.warm import run_warmer  # noqa: E402
from common.boot import boot  # noqa: E402

DRAIN_TIMEOUT_S = 10.0


class InFlight:
    """WSGI middleware counting requests inside the app, so a shutdown waits for work, not for idle
    keep-alive sockets; once draining, every response asks the client to close its connection."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.count = 0
        self.draining = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.count += 1
        try:
            if not self.draining:
                return self.app(environ, start_response)

            def closing(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                return start_response(status, [*headers, ("Connection", "close")], *rest)

            return self.app(environ, closing)
        finally:
            self.count -= 1


def main() -> int:
    config = boot("api")
    app = create_app(config)
    in_flight = InFlight(app)
    # A pool (unbounded) so that stop() can join the handlers and let finished responses flush.
    server = WSGIServer((config.api_host, config.api_port), in_flight, spawn=Pool(), log=None, error_log=None)
    # Accepted sockets inherit TCP_NODELAY: without it a keep-alive response waits ~40 ms (Nagle + delayed ACK).
    server.init_socket()
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop() -> None:
        # Graceful: refuse new connections (a proxy moves on to another API), finish what is running.
        logger.info("api stopping: {} requests in flight", in_flight.count)
        in_flight.draining = True
        server.close()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while in_flight.count and time.monotonic() < deadline:
            gevent.sleep(0.02)
        if in_flight.count:
            logger.warning("api stopping with {} requests still running", in_flight.count)
        server.stop(timeout=1)  # then idle keep-alive connections are dropped

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(stop))
    logger.bind(settings=config.public_summary()).info(
        "api listening on http://{}:{}", config.api_host, config.api_port
    )
    sampler = gevent.spawn(run_sampler, app)  # history rows and alert checks, once a minute
    warmer = gevent.spawn(run_warmer, app)  # the catalogue cache, at start and whenever Redis lost it
    svc = app.extensions["dms"]
    # Keeps this process's near cache in step with every other process's writes (api/near_cache.py).
    listener = gevent.spawn(run_listener, svc.near_cache, svc.redis, HITS_KEY)
    server.serve_forever()
    listener.kill(block=True, timeout=2)
    warmer.kill(block=True, timeout=2)
    sampler.kill(block=True, timeout=2)
    app.extensions["dms"].close()
    logger.info("api stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
