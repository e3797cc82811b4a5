"""`python -m gateway`: the WebSocket gateway (and, by default, a relay candidate)."""

from gevent import monkey

monkey.patch_all()  # first, before psycopg, redis or ssl are imported

import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from loguru import logger  # noqa: E402

from common.boot import boot  # noqa: E402
from gateway.listener import ListenError, bind_listener, start_listening  # noqa: E402
from gateway.server import Gateway, create_gateway_app, raise_fd_limit  # noqa: E402
from gateway.transport import UpgradeHandler  # noqa: E402


def main() -> int:
    config = boot("gateway")
    limit = raise_fd_limit()
    # Our own socket, not gevent's: SO_REUSEPORT (GATEWAY_REUSE_PORT) must be set before bind. A
    # taken port stops the process here, before anything has started.
    try:
        listener = bind_listener(config.gateway_host, config.gateway_port, reuse_port=config.gateway_reuse_port)
    except ListenError as exc:
        logger.error("gateway not started: {}", exc)
        return 1
    gateway = Gateway(config, run_relay=config.relay_in_gateway)
    gateway.start()
    start_listening(listener)
    server = WSGIServer(listener, create_gateway_app(gateway), log=None, error_log=None, handler_class=UpgradeHandler)
    server.init_socket()
    done = gevent.event.Event()

    def shut_down() -> None:
        # Alone on its port, keep listening while draining: new handshakes get 503 with Retry-After
        # and /health says "draining", so a load balancer moves on. Sharing the port, close the
        # listening socket first: the kernel then hands every new connection to the other processes,
        # instead of a share of them to one that can only refuse.
        logger.info("gateway draining")
        if config.gateway_reuse_port:
            server.close()
        gateway.drain()
        server.stop(timeout=1)
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(shut_down))
    server.start()
    shared = "port shared by SO_REUSEPORT, " if config.gateway_reuse_port else ""
    logger.info("gateway {} listening on ws://{}:{}/ws ({}descriptor limit {}, at most {} connections, "
                "{} new a second)",
                gateway.id, config.gateway_host, config.gateway_port, shared, limit,
                gateway.admission.max_connections, config.ws_accept_rate_per_s)
    done.wait()
    logger.info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
