"""A threaded loopback TCP proxy that, while chaos is on, drops a random client connection every 0.3-1 s."""

from __future__ import annotations

import random
import socket
import threading


class ChaosProxy:
    """Listens on 127.0.0.1:`port` and forwards every connection to `upstream_port`."""

    def __init__(self, upstream_port: int, *, min_gap_s: float = 0.3, max_gap_s: float = 1.0,
                 seed: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.min_gap_s = min_gap_s
        self.max_gap_s = max_gap_s
        self.random = random.Random(seed)
        self.dropped = 0
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._chaos = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> ChaosProxy:
        for target in (self._accept_forever, self._chaos_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def chaos(self, on: bool) -> None:
        (self._chaos.set if on else self._chaos.clear)()

    def stop(self) -> None:
        self._stop.set()
        self._chaos.set()  # wake the chaos thread
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress; close() alone does not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- internals -----------------------------------------------------------------------------
    def _accept_forever(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _chaos_forever(self) -> None:
        while not self._stop.is_set():
            self._chaos.wait()
            if self._stop.wait(self.random.uniform(self.min_gap_s, self.max_gap_s)):
                return
            if not self._chaos.is_set():
                continue
            with self._lock:
                pairs = sorted(self._pairs, key=lambda p: p[0].fileno())
            if pairs:
                self._drop(self.random.choice(pairs))
                self.dropped += 1
