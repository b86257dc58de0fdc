"""What a route does with new connections instead of forwarding them: hold them while
paused, or answer them while in maintenance.

- **Pause.** An accepted socket is parked: not read (its bytes wait in the kernel), not
  connected to any backend, not counted on one. `resume` hands the parked sockets, in accept
  order, to the route, which connects each to the backend it points at *then* (a switch made
  during the pause lands them on the new version). A socket parked longer than `max_pause` is
  answered like a gateway timeout: `504` for http routes, a plain close for tcp.
- **Maintenance.** http routes answer `503` with a small page carrying the operator's message;
  tcp routes close the connection.

An answer is sent, the write side shut, and whatever the client still sends is read and
dropped until it closes (at most `LINGER` seconds): closing a socket with unread bytes would
reset it and could destroy the answer before the client reads it.
"""

from __future__ import annotations

import html
import socket
from collections import deque
from typing import Any, Callable

LINGER = 2.0
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; margin: 4em auto; max-width: 40em">
<h1>{title}</h1><p>{text}</p></body></html>
"""


def http_answer(status: int, reason: str, text: str, retry_after: int | None = None) -> bytes:
    """A complete `Connection: close` HTTP/1.1 answer with a small HTML page."""
    body = _PAGE.format(title=f"{status} {reason}", text=html.escape(text)).encode()
    headers = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/html; charset=utf-8",
               f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store"]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


GATEWAY_TIMEOUT = http_answer(504, "Gateway Timeout",
                              "The service was paused for longer than allowed.")
DEFAULT_MAINTENANCE = "The service is down for maintenance. Please try again shortly."


class Answer:
    """Sends `data` on an accepted socket, then closes it politely (see module doc)."""

    __slots__ = ("reactor", "sock", "fileno", "pending", "timer", "writing")

    def __init__(self, reactor: Any, sock: socket.socket, data: bytes):
        self.reactor = reactor
        self.sock = sock
        self.fileno = sock.fileno
        self.pending = data
        self.writing = False
        self.timer = reactor.callLater(LINGER, self.close)
        sock.setblocking(False)
        self.doWrite()

    def logPrefix(self) -> str:
        return "gantry-proxy"

    def doWrite(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.pending = self.pending[sent:]
        if self.pending:
            if not self.writing:
                self.writing = True
                self.reactor.addWriter(self)
            return
        if self.writing:
            self.writing = False
            self.reactor.removeWriter(self)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.reactor.addReader(self)

    def doRead(self) -> None:
        try:
            if self.sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self.timer.active():
            self.timer.cancel()
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        self.sock.close()

    def connectionLost(self, reason: Any) -> None:
        self.close()


def refuse(reactor: Any, sock: socket.socket, answer: bytes | None) -> None:
    """Turn an accepted connection away: send `answer` first if there is one, else close."""
    if answer is None:
        sock.close()
    else:
        Answer(reactor, sock, answer)


class Handoff:
    """Stands in for a connection's protocol: the Port hands the accepted socket to `take`."""

    __slots__ = ("take",)

    def __init__(self, take: Callable[[socket.socket], None]):
        self.take = take

    def makeConnection(self, sock: socket.socket) -> None:
        self.take(sock)


class Pause:
    """A route's pause: parked sockets in accept order, expired after `max_pause` seconds.

    `expire(sock)` is called for each socket that waited too long (the route answers it).
    """

    def __init__(self, reactor: Any, max_pause: float, since: float,
                 expire: Callable[[socket.socket], None]):
        self.reactor = reactor
        self.max_pause = max_pause
        self.since = since  # wall-clock time, for the API and the state file
        self._expire = expire
        self.parked: deque[tuple[socket.socket, str | None, float]] = deque()
        self._timer: Any = None

    def protocol(self, host: str | None) -> Handoff:
        return Handoff(lambda sock: self.park(sock, host))

    def park(self, sock: socket.socket, host: str | None) -> None:
        self.parked.append((sock, host, self.reactor.seconds()))
        if self._timer is None:
            self._timer = self.reactor.callLater(self.max_pause, self._sweep)

    def _sweep(self) -> None:
        # Parked in accept order with one max_pause: the oldest always expires first.
        self._timer = None
        now = self.reactor.seconds()
        while self.parked and now - self.parked[0][2] >= self.max_pause:
            self._expire(self.parked.popleft()[0])
        if self.parked:
            wait = self.parked[0][2] + self.max_pause - now
            self._timer = self.reactor.callLater(wait, self._sweep)

    def set_max_pause(self, max_pause: float) -> None:
        self.max_pause = max_pause
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sweep()

    def release(self) -> list[tuple[socket.socket, str | None]]:
        """End the pause: the parked sockets, oldest first, for the route to connect."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        out = [(sock, host) for sock, host, _ in self.parked]
        self.parked.clear()
        return out

    def expire_all(self) -> int:
        """Answer every parked socket as timed out (the daemon is going away)."""
        released = self.release()
        for sock, _ in released:
            self._expire(sock)
        return len(released)

    def to_dict(self) -> dict[str, Any]:
        return {"maxPause": self.max_pause, "since": self.since}
