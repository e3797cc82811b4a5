"""`python -m gateway`: the WebSocket gateway (and, by default, a relay candidate)."""

from gevent import monkey

monkey.patch_all()  # first, before psycopg, redis or ssl are imported

import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from loguru import logger  # noqa: E402

from common.boot import boot  # noqa: E402
from gateway.server import Gateway, create_gateway_app, raise_fd_limit  # noqa: E402
from gateway.transport import UpgradeHandler  # noqa: E402

LISTEN_BACKLOG = 8192


def main() -> int:
    config = boot("gateway")
    limit = raise_fd_limit()
    gateway = Gateway(config, run_relay=config.relay_in_gateway)
    gateway.start()
    # A storm of reconnects arrives as thousands of SYNs at once. gevent listens with a backlog of
    # 128: past that the kernel drops SYNs, the client (or nginx) retransmits after 1 s and 3 s, and
    # nginx counts the connect timeout against the gateway. The kernel caps this at somaxconn.
    server = WSGIServer((config.gateway_host, config.gateway_port), create_gateway_app(gateway),
                        log=None, error_log=None, handler_class=UpgradeHandler, backlog=LISTEN_BACKLOG)
    # Accepted sockets inherit TCP_NODELAY: small event frames go out at once, not after Nagle's wait.
    server.init_socket()
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = gevent.event.Event()

    def shut_down() -> None:
        # Keep listening while draining: new handshakes get 503 and /health says "draining",
        # so a load balancer moves on; then stop.
        logger.info("gateway draining")
        gateway.drain()
        server.stop(timeout=1)
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(shut_down))
    server.start()
    logger.info("gateway {} listening on ws://{}:{}/ws (descriptor limit {}, at most {} connections, {} new a second)",
                gateway.id, config.gateway_host, config.gateway_port, limit, gateway.admission.max_connections,
                config.ws_accept_rate_per_s)
    done.wait()
    logger.info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
