"""A small HTTP/1.1 server: the transport of the control API and of /metrics.

Twisted's web server would do, but it costs an idle proxy about 4 MB of resident memory (its
imports: twisted.web, twisted.spread, xml, hyperlink) and a timer for its access log's clock,
for two endpoints that answer small JSON or text. This one parses what those callers send
(http.client, curl, Prometheus): a request line, headers, a body by Content-Length or chunked,
`Expect: 100-continue`, keep-alive and pipelining (one request at a time, in order), and
answers with a Content-Length. It keeps no timer: a long poll (a drain) may take minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer, protocol

log = logging.getLogger("proxy.http")

MAX_HEAD = 64 * 1024  # request line and headers
MAX_BODY = 16 * 1024 * 1024


@dataclass
class Request:
    """One parsed request. `segments` is the path split at "/" and percent-decoded, without
    the leading "/" (as twisted.web's postpath)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    disconnected: bool = False  # set when the caller hung up before the answer

    @property
    def segments(self) -> list[bytes]:
        path = self.target.split("?", 1)[0]
        scheme, sep, rest = path.partition("://")
        if sep and "/" not in scheme:  # absolute-form (RFC 9112 3.2.2): drop the authority
            path = "/" + rest.partition("/")[2]
        return [unquote_to_bytes(p) for p in path[1:].split("/")]


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], "defer.Deferred[Response] | Response"]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HTTPChannel(protocol.Protocol):
    """One connection: parses requests in order and writes each answer before the next."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.buffer = b""
        self.current: Request | None = None  # being answered
        self.closing = False
        self.paused = False
        self.continued = False  # 100 Continue sent for the request being read

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.current is None:
            self._next()
        elif len(self.buffer) > MAX_HEAD + MAX_BODY and not self.paused:
            self.paused = True  # a pipelining caller far ahead of its answers
            self.transport.pauseProducing()

    def connectionLost(self, reason: Any = None) -> None:
        if self.current is not None:
            self.current.disconnected = True

    def _next(self) -> None:
        """Starts answering the next complete request in the buffer, if there is one."""
        if self.closing or self.current is not None:
            return
        try:
            parsed = self._parse()
        except _BadRequest as e:
            self._write(None, Response(e.status, (str(e) + "\n").encode(), "text/plain"),
                        close=True)
            return
        if parsed is None:
            return
        request, close = parsed
        self.current = request
        self.closing = close
        d = defer.maybeDeferred(self.handler, request)
        d.addErrback(self._internal_error, request)
        d.addCallback(self._answer, request)

    def _parse(self) -> tuple[Request, bool] | None:
        """The next request and whether to close after it; None while it is incomplete."""
        self.buffer = self.buffer.lstrip(b"\r\n")  # tolerated between requests (RFC 9112)
        end = self.buffer.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end, sep = self.buffer.find(b"\n\n"), 2
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            return None
        head = self.buffer[:end].decode("latin-1")
        lines = head.replace("\r\n", "\n").split("\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(400, f"malformed request line: {lines[0][:100]!r}") from None
        if not version.startswith("HTTP/1.") or not method.isalpha():
            raise _BadRequest(400, f"malformed request line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, f"malformed header line: {line[:100]!r}")
            key = name.lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
        rest = end + sep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body_end = self._chunked(rest, headers)
            if body_end is None:
                return None
            body, rest = body_end
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "Content-Length is not a number") from None
            if length < 0 or length > MAX_BODY:
                raise _BadRequest(413, f"body too large (at most {MAX_BODY} bytes)")
            if len(self.buffer) < rest + length:
                self._continue(headers)
                return None
            body, rest = self.buffer[rest:rest + length], rest + length
        self.buffer = self.buffer[rest:]
        self.continued = False
        connection = headers.get("connection", "").lower()
        close = version == "HTTP/1.0" or "close" in connection
        return Request(method, target, version, headers, body), close

    def _chunked(self, pos: int, headers: dict[str, str]) -> tuple[bytes, int] | None:
        """A chunked body starting at `pos`: (body, end) or None while incomplete."""
        chunks = []
        size_total = 0
        while True:
            eol = self.buffer.find(b"\n", pos)
            if eol < 0:
                self._continue(headers)
                return None
            size_field = self.buffer[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size") from None
            size_total += size
            if size < 0 or size_total > MAX_BODY:
                raise _BadRequest(413, f"body too large (at most {MAX_BODY} bytes)")
            pos = eol + 1
            if size == 0:
                # Trailers (ignored) up to an empty line.
                while True:
                    eol = self.buffer.find(b"\n", pos)
                    if eol < 0:
                        return None
                    line, pos = self.buffer[pos:eol].strip(), eol + 1
                    if not line:
                        return b"".join(chunks), pos
            if len(self.buffer) < pos + size + 1:
                self._continue(headers)
                return None
            chunks.append(self.buffer[pos:pos + size])
            pos += size
            if self.buffer[pos:pos + 2] == b"\r\n":
                pos += 2
            elif self.buffer[pos:pos + 1] == b"\n":
                pos += 1
            elif len(self.buffer) < pos + 2:
                return None
            else:
                raise _BadRequest(400, "malformed chunk")

    def _continue(self, headers: dict[str, str]) -> None:
        """Tells a caller that waits for it (curl, for bodies over 1 KB) to send its body."""
        if headers.get("expect", "").lower() == "100-continue" and not self.continued:
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _internal_error(self, failure: Any, request: Request) -> Response:
        log.error("%s %s failed", request.method, request.target, exc_info=failure.value)
        return Response(500, f"internal error: {failure.value!r}\n".encode(), "text/plain")

    def _answer(self, response: Response, request: Request) -> None:
        self.current = None
        if request.disconnected:  # the caller gave up (a long poll)
            return
        self._write(request, response, close=self.closing)
        if not self.closing:
            if self.paused:
                self.paused = False
                self.transport.resumeProducing()
            self._next()

    def _write(self, request: Request | None, response: Response, close: bool) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        head = [f"HTTP/1.1 {response.status} {reason}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if request is None or request.method != "HEAD":
            data += response.body
        self.transport.write(data)
        if close:
            self.closing = True
            self.transport.loseConnection()


class HTTPFactory(protocol.Factory):
    """Builds an HTTPChannel per connection, all answered by `handler`."""

    noisy = False

    def __init__(self, handler: Handler):
        self.handler = handler

    def buildProtocol(self, addr: Any) -> HTTPChannel:
        return HTTPChannel(self.handler)
