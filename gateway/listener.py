"""The gateway's listening socket, made here rather than by gevent, so SO_REUSEPORT can be set before bind.

With `GATEWAY_REUSE_PORT` several gateway processes on one machine bind the same address and
port, and the kernel hashes each new connection (by its addresses and ports) to one of their
listening sockets: no proxy in between, so no extra copy of every frame. Every process must set
the option, run as the same user, and carry its own `GATEWAY_ID` (docs/FLEET.md).
"""

from __future__ import annotations

import errno
import socket

# A storm of reconnects arrives as thousands of SYNs at once. gevent listens with a backlog of
# 128: past that the kernel drops SYNs, the client (or nginx) retransmits after 1 s and 3 s, and
# nginx counts the connect timeout against the gateway. The kernel caps this at somaxconn.
LISTEN_BACKLOG = 8192


class ListenError(RuntimeError):
    """The address cannot be bound; the message says why and what to do."""


def bind_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket, not yet listening, with the options gevent would set plus ours.

    Bound before the gateway starts, so a taken port stops the process before anything runs;
    `start_listening` comes last, so a process sharing the port is handed no connection before
    it can accept one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what gevent sets: restart over TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit TCP_NODELAY: small event frames go out at once, not after Nagle's wait.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            hint = ("every process sharing it must set GATEWAY_REUSE_PORT=true and run as the same user"
                    if reuse_port else "another process holds it; to share one port between gateway processes, "
                    "set GATEWAY_REUSE_PORT=true on every one of them, each with its own GATEWAY_ID")
            raise ListenError(f"cannot listen on {host}:{port}: address already in use ({hint})") from exc
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def start_listening(sock: socket.socket, backlog: int = LISTEN_BACKLOG) -> None:
    sock.listen(backlog)
    sock.setblocking(False)
