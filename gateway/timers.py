"""One loop drives every connection's clock: pings, keepalive and token expiry closes, close timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import gevent

from common.config import Config
from gateway.connection import Connection
from gateway.protocol import Action


def run_timers(config: Config, connections: Callable[[], Iterable[Connection]],
               act: Callable[[Connection, Action], None], running: Callable[[], bool]) -> None:
    tick_s = max(0.02, min(config.ws_ping_interval_s, config.ws_ping_timeout_s, config.ws_close_timeout_s) / 5)
    while running():
        now, wall = time.monotonic(), time.time()
        for conn in list(connections()):
            for action in conn.session.tick(now, wall):
                act(conn, action)
        gevent.sleep(tick_s)
