"""HTTP/1.1 to one server with the standard library: kept-open connections reused across
threads (one per concurrent request), and streaming answers another thread can end.

Used for the Docker engine (gantry.engine) and etcd's JSON gateway (gantryd.etcd_gateway):
both are spoken to by long-lived agents, where a client library's import and per-request cost
is most of what the agent costs at idle.
"""
from __future__ import annotations

import http.client
import socket
import threading
from typing import Callable, Iterator

Connect = Callable[[float | None], http.client.HTTPConnection]


class Pool:
    """Kept-open connections to one server. ``connect(timeout)`` makes a connected
    connection (raising the caller's own error when it cannot); ``failed(exc)`` turns a
    transport error after that into the caller's error."""

    def __init__(self, connect: Connect, timeout: float | None,
                 failed: Callable[[BaseException], Exception]) -> None:
        self.connect = connect
        self.timeout = timeout
        self.failed = failed
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None,
                timeout: float | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        """One request on a kept connection (``timeout``: per socket operation, default the
        pool's); the response (read) and its body."""
        timeout = timeout or self.timeout
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        while True:
            try:
                if conn is None:
                    conn = self.connect(timeout)
                else:
                    conn.sock.settimeout(timeout)
                conn.request(method, path, body, headers or {})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                # A kept connection the server closed meanwhile: once more on a new one.
                if reused and not isinstance(exc, TimeoutError):
                    reused, conn = False, None
                    continue
                raise self.failed(exc) from None
            break
        with self._lock:
            if self._closed or response.will_close:
                conn.close()
            else:
                self._idle.append(conn)
        return response, data

    def open(self, method: str, path: str, body: bytes | str | None = None,
             headers: dict[str, str] | None = None,
             timeout: float | None = None) -> tuple[http.client.HTTPConnection,
                                                    http.client.HTTPResponse]:
        """A request on a connection of its own (a stream), its response not yet read; the
        socket then waits ``timeout`` seconds per read (None: as long as it takes)."""
        conn = self.connect(self.timeout)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self.failed(exc) from None
        conn.sock.settimeout(timeout)
        return conn, response

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Stream:
    """A streaming answer on a connection of its own: read by one thread, ended by any."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self.conn, self.response = conn, response
        self._sock = conn.sock

    def lines(self) -> Iterator[bytes]:
        """The answer's non-empty lines as they come."""
        for line in self.response:
            if line.strip():
                yield line

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The answer's bytes as they come."""
        while True:
            data = self.response.read1(size)
            if not data:
                return
            yield data

    def interrupt(self) -> None:
        """From another thread: end the stream; its reader wakes at once (and closes it).
        Only the socket is shut down: closing the connection under a reader breaks
        http.client's own state."""
        try:  # the plain socket's shutdown, also under TLS: it wakes a blocked reader
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """From the reading thread, once done with the stream."""
        self.interrupt()
        self.conn.close()
