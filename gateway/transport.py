"""The socket of one WebSocket connection once the handshake is accepted: write-through, one reader.

The HTTP handshake runs in Flask under gevent.pywsgi; `UpgradeHandler` lets the view take the
accepted socket out of pywsgi (pywsgi then writes no response and does not close it), and
`accept` wraps it in a `Transport`, which answers 101. From then on (and for that answer)
`Transport` is the only code touching the socket:

- `send(frame)` writes ready frame bytes at once with a non-blocking send when nothing is queued;
  only what the kernel does not take is queued, and a writer greenlet, started on demand, flushes
  the queue with several frames per send. Past `max_queued_frames` or `max_queued_bytes` (data
  and control frames alike) the connection is closed with 4008 and the backlog dropped.
- Inside `corked()` frames wait and leave together in one write when it ends (or at `push()`):
  a replay's frames, the reply before them and the live events held meanwhile cost one send,
  one wake-up of the proxy and one of the client instead of one each.
- Reading holds no greenlet while the client is silent: `watch_reads(callback)` asks the event
  loop to call back once bytes (or the end) can be read, and the reader then takes what is there
  with `read_nowait()` and watches again. A greenlet parked in `recv` costs about 8 KiB (its
  stack and its share of the interpreter's frame stack); a watcher costs under 0.5 KiB, and most
  connections are silent most of the time. `read()` (blocking) stays for tools and tests.
- `close(code)` sends a close frame after what is queued (or instead of it); `abort()` drops the
  TCP connection. The caller aborts when the peer answers the close or its timeout passes.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.pywsgi import WSGIHandler

from gateway import framing
from gateway.closes import SLOW_CONSUMER
from gateway.compression import Deflate

TAKEOVER_KEY = "dms.take_socket"
MAX_QUEUED_FRAMES = 1000
MAX_QUEUED_BYTES = 1024 * 1024
READ_CHUNK = 65536


class UpgradeHandler(WSGIHandler):
    """pywsgi's handler plus one environ entry: a callable that hands the socket to the app.

    After the hand-over pywsgi's loop sees no socket, so it neither reads another request nor
    writes or closes anything; the view returns a response that writes nothing (`handshake.Taken`).
    """

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ[TAKEOVER_KEY] = self._take_socket
        return environ

    def _take_socket(self) -> socket.socket:
        handler: Any = self  # pywsgi's attributes are untyped
        sock = handler.socket
        handler.socket = None
        self.close_connection = True
        # A fresh socket object on the same descriptor: pywsgi's buffered reader keeps a reference
        # on the old one, which would otherwise delay the real close of the descriptor.
        fd = sock.detach()
        owned = gsocket.socket(fileno=fd)
        owned.settimeout(None)
        return owned


def accept(take: Callable[[], socket.socket], key: str, *, deflate: Deflate | None = None) -> Transport | None:
    """Take the socket out of pywsgi and answer 101 on it; None if the peer is already gone."""
    transport = Transport(take(), deflate=deflate)
    if not transport.send_handshake(upgrade_response(key, deflate=deflate)):
        return None
    return transport


def upgrade_response(key: str, *, deflate: Deflate | None = None) -> bytes:
    extensions = b"" if deflate is None else b"Sec-WebSocket-Extensions: " + deflate.response.encode("ascii") + b"\r\n"
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + framing.accept_key(key).encode("ascii") + b"\r\n" + extensions + b"\r\n")


class Transport:
    """One accepted WebSocket socket; `send`/`close` from any greenlet, `read` from one."""

    def __init__(self, sock: socket.socket, *, max_queued_frames: int = MAX_QUEUED_FRAMES,
                 max_queued_bytes: int = MAX_QUEUED_BYTES, deflate: Deflate | None = None) -> None:
        self.sock = sock
        self.deflate = deflate  # the permessage-deflate the 101 answer agreed, or None
        self.max_queued_frames = max_queued_frames
        self.max_queued_bytes = max_queued_bytes
        self.frames_sent = 0
        self.close_code: int | None = None  # the code of the close frame we sent
        self.aborted = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # The queue's first entry is the unsent rest of a frame whose start is already on the wire:
        # dropping the backlog must keep it, or the peer reads the close frame as payload.
        self._partial_head = False
        self._writer: gevent.Greenlet | None = None
        self._corked = 0
        self._fd = sock.fileno()
        self._read_watcher: Any = None  # the event loop's io watcher, made on first use
        self._on_readable: Callable[[], object] | None = None
        self.on_slow_consumer: Callable[[], None] | None = None
        self.on_abort: Callable[[], None] | None = None  # told once when the TCP connection is dropped

    @property
    def closing(self) -> bool:
        return self.close_code is not None or self.aborted

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    # -- writing -------------------------------------------------------------------------------
    def send_handshake(self, response: bytes) -> bool:
        """The 101 answer, before any frame: blocking, all of it; False (and closed) if the peer left."""
        try:
            self.sock.sendall(response)
        except OSError:
            self.abort()
            return False
        return True

    def send(self, frame: bytes) -> bool:
        """Hand one data frame to the socket; False when closing or (then closed 4008) too far behind."""
        if not self._enqueue(frame):
            return False
        self.frames_sent += 1
        return True

    def send_control(self, frame: bytes) -> bool:
        """Ping or pong: in order with data and under the same limits, never after a close.

        A pong is as much a frame the peer must read as an event: a client that pings and never
        reads would otherwise grow its queue without end, 20 pongs a second.
        """
        return self._enqueue(frame)

    @contextmanager
    def corked(self) -> Iterator[None]:
        """Hold the frames sent inside and write them at the end in one send (nestable).

        Never hold a cork across a wait: whoever blocks inside calls `push()` first, or the
        connection's other events wait with it.
        """
        self.cork()
        try:
            yield
        finally:
            self.uncork()

    def cork(self) -> None:
        """Hold frames from now on (see `corked`); every `cork` needs its `uncork`."""
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if not self._corked:
            self.push()

    def push(self) -> None:
        """Write the frames a cork holds, now, in one send (the rest goes to the writer)."""
        if self._queue and self._writer is None and not self.aborted:
            chunk = b"".join(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._partial_head = False
            self._write_through(chunk)

    def _enqueue(self, frame: bytes) -> bool:
        if self.close_code is not None or self.aborted:
            return False
        if self._queue or self._writer is not None or self._corked:
            if (len(self._queue) >= self.max_queued_frames
                    or self._queued_bytes + len(frame) > self.max_queued_bytes):
                if self.on_slow_consumer is not None:
                    self.on_slow_consumer()
                # The connection's own handler has closed it already; this serves a bare transport.
                self.close(SLOW_CONSUMER.code, SLOW_CONSUMER.reason, discard_queued=True)
                return False
            self._queue.append(frame)
            self._queued_bytes += len(frame)
        else:
            self._write_through(frame)
        return True

    def close(self, code: int, reason: str, *, discard_queued: bool = False) -> bool:
        """Send a close frame after what is queued (or instead of it); False if one was sent already."""
        if self.close_code is not None or self.aborted:
            return False
        self.close_code = code
        if discard_queued:
            self._drop_backlog()
        frame = framing.close(code, reason)
        if self._queue or self._writer is not None or self._corked:
            self._queue.append(frame)
        else:
            self._write_through(frame)
        return True

    def abort(self) -> None:
        """Drop the TCP connection now; wakes the reader and any writer (they see EOF or EBADF)."""
        if self.aborted:
            return
        self.aborted = True
        if self.on_abort is not None:
            self.on_abort()
        self._queue.clear()
        self._queued_bytes = 0
        self._partial_head = False
        # The watcher goes before the descriptor: a closed number is soon another connection's.
        waiting = self._read_watcher is not None and self._read_watcher.active
        if self._read_watcher is not None:
            self._read_watcher.stop()
            self._read_watcher.close()
            self._read_watcher = None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if waiting and self._on_readable is not None:
            gevent.get_hub().loop.run_callback(self._on_readable)  # the reader reads the end

    def _write_through(self, frame: bytes) -> None:
        try:
            sent = self.sock.send(frame, 0, 0.0)  # type: ignore[call-arg]  # gevent: timeout 0 never waits
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(frame):
            rest = frame[sent:]
            self._queue.append(rest)  # the queue was empty: write-through only happens then
            self._queued_bytes += len(rest)
            self._partial_head = sent > 0
            self._writer = gevent.spawn(self._flush)

    def _drop_backlog(self) -> None:
        """Forget the queued frames, all but the rest of a frame the peer has started to receive."""
        head = self._queue[0] if self._partial_head and self._queue else b""
        self._queue.clear()
        if head:
            self._queue.append(head)
        self._queued_bytes = len(head)

    def _flush(self) -> None:
        """Writer greenlet: send the backlog, many frames per call, until it is empty."""
        try:
            while self._queue and not self.aborted:
                chunk = b"".join(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._partial_head = False  # sendall finishes the chunk, or the connection is gone
                self.sock.sendall(chunk)
        except OSError:
            self.abort()
        finally:
            self._writer = None

    # -- reading -------------------------------------------------------------------------------
    def watch_reads(self, on_readable: Callable[[], object]) -> None:
        """Have the event loop call `on_readable` once bytes or the end can be read (once per call).

        The callback runs in the event loop itself and must not block: it hands the reading to a
        greenlet. After an abort it is called at once, so the reader finds the end.
        """
        self._on_readable = on_readable
        hub = gevent.get_hub()
        if self.aborted:
            hub.loop.run_callback(on_readable)
            return
        if self._read_watcher is None:
            self._read_watcher = hub.loop.io(self._fd, 1)
        self._read_watcher.start(self._readable)

    def _readable(self) -> None:
        self._read_watcher.stop()  # one shot: the reader watches again when it has read all there is
        assert self._on_readable is not None
        self._on_readable()

    def read_nowait(self) -> bytes | None:
        """The bytes the kernel holds (at most READ_CHUNK), None if none yet, b"" once the connection ended."""
        if self.aborted:
            return b""
        try:
            return os.read(self._fd, READ_CHUNK)  # the descriptor is non-blocking (gevent made it so)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def read(self) -> bytes:
        """Block until bytes arrive; b"" once the peer or `abort` ended the connection."""
        if self.aborted:
            return b""
        try:
            return self.sock.recv(READ_CHUNK)
        except OSError:
            return b""
