"""An object store that goes away: a TCP relay on 127.0.0.1 in front of moto's S3 server that,
when a request line matches, drops every connection and refuses new ones for a while, then
listens again on the same port. moto keeps its objects meanwhile, as S3 does through an outage.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class S3Outage:
    """Relays ``127.0.0.1:PORT`` to ``upstream`` (``host:port``); the first request whose first
    bytes start with ``trigger`` (e.g. ``b"PUT /bucket/run/checkpoint_"``) starts an outage of
    ``seconds``. ``url`` is the endpoint to give clients; ``outages`` counts the outages."""

    def __init__(self, upstream: str, trigger: bytes, seconds: float):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.trigger, self.seconds = trigger, seconds
        self.outages = 0
        self.down_until = 0.0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(0.1)
        return sock

    def _serve(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() < self.down_until:
                time.sleep(0.05)
                continue
            if self._listener is None:  # the outage is over: listen on the same port again
                self._listener = self._listen(self.port)
            listener = self._listener
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and not self.outages and data.startswith(self.trigger):
                    self._go_down()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _go_down(self) -> None:
        """Drops every open connection (the request in flight gets a reset) and stops listening:
        new connections are refused until the outage ends."""
        self.outages += 1
        self.down_until = time.monotonic() + self.seconds
        listener, self._listener = self._listener, None
        with contextlib.suppress(OSError):
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        self._close(*conns)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._conns.discard(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = set(self._conns)
        self._close(*conns)
