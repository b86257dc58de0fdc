"""Loopback test backends and client helpers for the proxy tests (real sockets, threads)."""

from __future__ import annotations

import hashlib
import os
import selectors
import socket
import threading

from rig import free_port, wait_for  # noqa: F401  (scripts/, on sys.path via tests/conftest.py)

LOOPBACK = "127.0.0.1"






class EchoServer:
    """Single-threaded selectors echo server: optional greeting, bounded buffers, half-close
    aware (EOF from the client is answered with EOF after the echo is flushed)."""

    MAX_BUFFER = 1 << 20

    def __init__(self, greeting: bytes = b"", host: str = LOOPBACK):
        self.greeting = greeting
        self.listener = socket.create_server((host, 0), backlog=1024)
        self.listener.setblocking(False)
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.open = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._stop_r, self._stop_w = os.pipe()
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        conns: dict[socket.socket, dict] = {}
        while True:
            for key, events in self._sel.select():
                if key.data == "stop":
                    for s in conns:
                        s.close()
                    self.listener.close()
                    return
                if key.fileobj is self.listener:
                    self._accept(conns)
                else:
                    self._service(key.fileobj, conns[key.fileobj], events, conns)

    def _accept(self, conns: dict) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            state = {"out": bytearray(self.greeting), "eof": False}
            conns[s] = state
            self.accepted += 1
            self.open += 1
            self._update(s, state, register=True)

    def _update(self, s: socket.socket, state: dict, register: bool = False) -> None:
        events = 0
        if not state["eof"] and len(state["out"]) < self.MAX_BUFFER:
            events |= selectors.EVENT_READ
        if state["out"]:
            events |= selectors.EVENT_WRITE
        if register:
            self._sel.register(s, events or selectors.EVENT_READ, None)
        elif events:
            self._sel.modify(s, events, None)

    def _close(self, s: socket.socket, conns: dict) -> None:
        self._sel.unregister(s)
        s.close()
        del conns[s]
        self.open -= 1

    def _service(self, s: socket.socket, state: dict, events: int, conns: dict) -> None:
        try:
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 18)
                if data:
                    state["out"] += data
                else:
                    state["eof"] = True
            if events & selectors.EVENT_WRITE and state["out"]:
                sent = s.send(state["out"])
                del state["out"][:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(s, conns)
            return
        if state["eof"] and not state["out"]:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._close(s, conns)
            return
        self._update(s, state)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._sel.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class SourceServer:
    """Sends `total` bytes to each client as fast as the client (through the proxy) takes
    them, then closes. `sent` is how far the (single) current sender got."""

    def __init__(self, total: int, host: str = LOOPBACK):
        self.total = total
        self.sent = 0
        self.listener = socket.create_server((host, 0))
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        block = os.urandom(1 << 16)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    while self.sent < self.total:
                        n = min(len(block), self.total - self.sent)
                        conn.sendall(block[:n])
                        self.sent += n
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def refused(address: str) -> bool:
    """True when nothing listens on ``address`` (the connect is refused)."""
    try:
        connect(address, timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def held_connection(address: str) -> socket.socket:
    """A connection through ``address`` to an echo backend, proven open by one round trip."""
    held = connect(address)
    held.sendall(b"a")
    assert held.recv(1) == b"a"
    return held


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 18)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def echo_digest(address: str, payload: bytes, timeout: float = 60.0) -> tuple[str, int]:
    """Send `payload` through an echo path, half-close, read to EOF concurrently: answers the
    sha256 and size of what came back."""
    sock = connect(address, timeout)
    with sock:
        def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        digest = hashlib.sha256()
        size = 0
        while True:
            data = sock.recv(1 << 18)
            if not data:
                break
            digest.update(data)
            size += len(data)
        sender.join(timeout)
        return digest.hexdigest(), size


class HttpServer:
    """A threaded HTTP/1.1 (keep-alive) backend answering its `name`; `GET /sleep/S` answers
    after S seconds. `requests` counts the requests it answered."""

    def __init__(self, name: str, host: str = LOOPBACK):
        import http.server
        import time

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/sleep/"):
                    time.sleep(float(self.path.rsplit("/", 1)[1]))
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.requests += 1

            def log_message(self, *args: object) -> None:
                pass

        self.name = name
        self.requests = 0
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(address: str, path: str = "/", timeout: float = 30.0,
             source: str | None = None) -> tuple[int, str]:
    """One request on a new connection: (status, body)."""
    import http.client
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()
