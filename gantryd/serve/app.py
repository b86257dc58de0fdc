"""The plumbing of `gantryd serve`: a request routed by method and path pattern to a handler
that runs in the reactor's thread pool (etcd and Docker calls block), and its answer.

Handlers are plain functions `handler(ctx, req) -> Reply`, registered by the modules beside
this one (api.py, hooks.py, page.py, metrics.py) through `Routes.add`. They raise `HttpError`
for an answer other than 200; any other exception is an internal error (500, logged), which
the fuzz tests hold to never happen. A body over `MAX_BODY` is answered 413 unread.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet import threads
from twisted.web import http, resource, server

from gantry.config import ConfigError
from gantry.errors import GantryError

from .. import etcd as E
from ..deploy import DeployError
from ..history import NoTarget
from ..keys import check_segment
from ..store import Conflict, Store, StoreError

log = logging.getLogger("gantryd.serve")

MAX_BODY = 1 << 20  # bytes; registry envelopes and webhook bodies are far smaller
LINGER = 5.0  # seconds a refused connection is read (and dropped) before it is cut


class HttpError(Exception):
    """An answer other than 200: `{"error": message}` with `status` (and `extra` fields)."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class Req:
    """One request, decoded: path segments, the first value of each query parameter,
    lower-case header names, the raw body and the parameters of the matched pattern; the
    client's address, and `gone`, set when the client hung up before its answer (a long
    poll stops waiting)."""

    method: str
    path: tuple[str, ...]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    client: str = ""
    gone: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def json(self) -> Any:
        """The body as JSON (HttpError 400 when it is not)."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"body is not valid JSON: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty)."""
        data = self.json() if self.body.strip() else {}
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        return data


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(data, indent=1).encode() + b"\n")


@dataclass
class ServeContext:
    """What every handler may use. Stateless apart from the etcd client: any number of
    `gantryd serve` instances can answer for the same fleet."""

    etcd: E.Etcd
    prefix: str
    token: str | None = None  # bearer token of writes (API, registry hook); None: refused
    webhook_secret: bytes | None = None  # HMAC key of /v1/hooks/generic; None: refused
    docker_url: str | None = None  # the engine asked to resolve tags (update)
    extra: dict[str, Any] = field(default_factory=dict)  # per-module state (metrics...)
    # Set when the server shuts down: long polls answer at once instead of holding the
    # thread pool (which shutdown joins) until their timeout.
    stopping: threading.Event = field(default_factory=threading.Event)

    def store(self, project: str) -> Store:
        """The project's store; 404 for a bad name (no key is ever built from it)."""
        try:
            check_segment("project", project)
        except ValueError as exc:
            raise HttpError(404, str(exc)) from None
        return Store(self.etcd, project, self.prefix)

    def require_token(self, req: Req) -> None:
        """401 unless `Authorization: Bearer <token>` matches (constant time)."""
        if self.token is None:
            raise HttpError(403, "writes are disabled: gantryd serve runs without --token-file")
        given = req.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token.encode()):
            raise HttpError(401, "missing or wrong bearer token")

    def require_signature(self, req: Req) -> None:
        """401 unless `X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the raw body
        under the webhook secret (constant-time compare)."""
        if self.webhook_secret is None:
            raise HttpError(403, "webhooks are disabled: gantryd serve runs without "
                                 "--webhook-secret-file")
        given = req.headers.get("x-hub-signature-256", "")
        want = "sha256=" + hmac.new(self.webhook_secret, req.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.strip().encode(), want.encode()):
            raise HttpError(401, "missing or wrong X-Hub-Signature-256")


Handler = Callable[[ServeContext, Req], Reply]


class Routes:
    """Method + path pattern -> handler. A pattern's `{name}` matches one segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern)) + "/?$"
        self._routes.append((method.upper(), re.compile(regex), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for m, regex, handler in self._routes:
            found = regex.match(path)
            if found:
                if m == method or (m == "GET" and method == "HEAD"):
                    return handler, found.groupdict()
                allowed = True
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}")
        raise HttpError(404, f"no such resource: {path}")


class LimitedRequest(server.Request):
    """A request whose body is refused (413) as soon as it is known to be over MAX_BODY:
    from its Content-Length, or once its chunks pass it; the rest is not kept."""

    too_big = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._too_big()
        super().gotLength(length if not self.too_big else 0)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_big:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self._too_big()
            return
        super().handleContentChunk(data)

    def _too_big(self) -> None:
        self.too_big = True
        refuse = getattr(self.channel, "refuse", None)
        if refuse is not None:  # answered now, not after the whole body was sent
            refuse(413, f"request body over {MAX_BODY} bytes")

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        try:
            super().requestReceived(command, path, version)
        except ValueError:
            # Twisted parses Content-Type through the email package, which refuses a value
            # holding a character it reads as a line break (\x85, \x0b...): an unhandled
            # error there would drop the connection without an answer.
            refuse = getattr(self.channel, "refuse", None)
            if refuse is None:
                raise
            refuse(400, "malformed header value (Content-Type)")

    def process(self) -> None:
        if not getattr(self.channel, "refused", False):  # else: answered already
            super().process()


class Channel(http.HTTPChannel):
    """Twisted's HTTP channel, answering what it cannot parse (a request line or a header
    line over MAX_LENGTH, too many headers, a malformed request) with a JSON error where
    Twisted would close the connection silently or answer a bare 400. The close is
    graceful: our side is shut and what the client still sends is read and dropped for a
    moment, so that the answer is not lost to a TCP reset."""

    refused = False
    _linger: Any = None

    def lineLengthExceeded(self, line: bytes) -> None:
        if getattr(self, "_HTTPChannel__first_line", False):
            self.refuse(414, f"the request line is over {self.MAX_LENGTH} bytes")
        else:
            self.refuse(431, f"a header line is over {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "malformed HTTP request (request line, headers or body framing)")

    def dataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self.refused:  # the rest of a buffer parsed after a refusal
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().rawDataReceived(data)

    def _send100Continue(self) -> None:
        if not self.refused:  # a body too big was refused from its Content-Length
            super()._send100Continue()

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with `{"error": message}` now, and close."""
        if self.refused:
            return
        self.refused = True
        body = json.dumps({"error": message}).encode() + b"\n"
        reason = http.RESPONSES.get(status, b"Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\nserver: gantryd"
                             b"\r\n\r\n%s" % (status, reason, len(body), body))
        self.setTimeout(None)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:  # TLS: its own orderly shutdown
            self.transport.loseConnection()
            return
        half_close()
        self._linger = self.callLater(LINGER, self.transport.abortConnection)


class ServeResource(resource.Resource):
    """The whole service as one leaf: decode, route, run the handler in a thread, answer."""

    isLeaf = True

    def __init__(self, ctx: ServeContext, routes: Routes):
        super().__init__()
        self.ctx = ctx
        self.routes = routes

    def render(self, request: server.Request) -> Any:
        try:
            req, handler = self._decode(request)
        except HttpError as exc:
            self._write(request, _error_reply(exc))
            return server.NOT_DONE_YET
        request.notifyFinish().addErrback(lambda _: req.gone.set())
        d = threads.deferToThread(_call, handler, self.ctx, req)
        d.addCallback(lambda reply: self._write(request, reply))
        return server.NOT_DONE_YET

    def _decode(self, request: server.Request) -> tuple[Req, Handler]:
        method = request.method.decode("ascii", "replace").upper()
        if getattr(request, "too_big", False):
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
        try:
            path = request.path.decode("utf-8")
            query = {k: v[0] for k, v in parse_qs(
                (request.uri.partition(b"?")[2]).decode("utf-8"),
                keep_blank_values=True, strict_parsing=False).items()}
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the request line is not UTF-8") from None
        # Matched on the segments as sent: an encoded slash (%2F) stays inside its segment.
        raw = [p for p in path.split("/") if p]
        handler, params = self.routes.match(method, "/" + "/".join(raw))
        params = {k: unquote(v) for k, v in params.items()}
        segments = tuple(unquote(p) for p in raw)
        headers = {k.decode("latin-1").lower(): v[0].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        request.content.seek(0)
        body = request.content.read()
        peer = request.getClientAddress()
        client = getattr(peer, "host", "") or str(peer)
        return Req(method, segments, query, headers, body, params, client), handler

    @staticmethod
    def _write(request: server.Request, reply: Reply) -> None:
        if request._disconnected:  # the caller gave up on a long poll
            return
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", reply.content_type.encode())
        request.setHeader(b"content-length", str(len(reply.body)).encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"server", b"gantryd")  # not Twisted's name and version
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        if request.method != b"HEAD":
            request.write(reply.body)
        request.finish()


def _error_reply(exc: HttpError) -> Reply:
    return json_reply({"error": exc.message, **exc.extra}, exc.status)


def _call(handler: Handler, ctx: ServeContext, req: Req) -> Reply:
    """Run a handler; every failure becomes an answer (never a dropped connection)."""
    try:
        return handler(ctx, req)
    except HttpError as exc:
        return _error_reply(exc)
    except ConfigError as exc:
        return _error_reply(HttpError(400, str(exc)))
    except E.EtcdUnavailable as exc:
        return _error_reply(HttpError(503, f"etcd unavailable: {exc}"))
    except (Conflict, DeployError, NoTarget) as exc:  # nothing was written
        return _error_reply(HttpError(409, str(exc)))
    except GantryError as exc:  # Docker or the registry could not resolve the image
        return _error_reply(HttpError(502, str(exc)))
    except (E.EtcdError, StoreError) as exc:
        status = 404 if "has no configuration" in str(exc) else 502
        return _error_reply(HttpError(status, str(exc)))
    except Exception as exc:  # a bug: logged with its traceback, answered 500
        log.exception("%s %s failed", req.method, "/" + "/".join(req.path))
        return _error_reply(HttpError(500, f"internal error: {exc!r}"))
