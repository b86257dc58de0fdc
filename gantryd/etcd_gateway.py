"""One etcd endpoint through etcd's JSON gateway (`/v3/...` over HTTP/1.1), standard library
only.

etcd serves its v3 API as JSON next to gRPC on every client port (`--enable-grpc-gateway`, on
by default since 3.4): the same requests and answers, with bytes in base64 and 64-bit numbers as
strings. gantryd speaks it with `http.client` instead of gRPC because a host agent idles: gRPC's
C core and its polling threads woke the daemon a dozen times a second and made two thirds of its
idle CPU, and it and python-etcd3's protobuf code (pure Python: the generated code predates
protobuf 4) made a third of its memory and most of the cost of decoding watch events on a
100-host fleet. Errors come back as a gRPC status in JSON (`{"code": 7, "message": ...}`).
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
from typing import Iterator

from gantry import http_pool
from gantry.http_pool import Pool

log = logging.getLogger(__name__)

# gRPC status codes (the gateway answers them in JSON)
NOT_FOUND = 5
PERMISSION_DENIED = 7
# After these another endpoint may answer: the member has no leader, timed out, or broke.
_RETRYABLE_CODES = {4: "timed out", 13: "internal error", 14: "unavailable"}


class Refused(Exception):
    """etcd answered with an error status (`code` is gRPC's, `message` etcd's words)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def details(self) -> str:
        """etcd's own words, without its `etcdserver: ` prefix."""
        return self.message.removeprefix("etcdserver: ")


class GatewayUnusable(Exception):
    """The gateway cannot serve this client: etcd has it turned off, or will not take a
    client certificate's CN as the user through it (auth is on). Requests must go over gRPC
    (gantryd/etcd_grpc.py); the message says why."""


class Unreachable(Exception):
    """Connecting to or talking with one endpoint failed; `reason` says why in words, and
    `handshake` whether it was the TLS handshake (a certificate problem, not an outage)."""

    def __init__(self, reason: str, handshake: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.handshake = handshake


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def number(message: dict, name: str) -> int:
    """A 64-bit field of an answer (a string in JSON; absent when zero)."""
    return int(message.get(name) or 0)


def tls_context(ca_cert: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The client's TLS context; unusable files raise Unreachable(handshake=True)."""
    try:
        context = ssl.create_default_context(cafile=ca_cert)
        if cert or key:
            context.load_cert_chain(cert or "", key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise Unreachable("TLS: the certificate files cannot be used (not PEM, or --key is "
                          f"not the key of --cert): {_short(exc)}", True) from None
    return context


def _short(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) \
        or type(exc).__name__


def _tls_reason(exc: ssl.SSLError, connected: bool) -> str:
    """A failed TLS exchange in words; `connected`: after our side of the handshake."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return WRONG_HOST if "mismatch" in text else WRONG_CA
    # The server sent an alert about our certificate, or (TLS 1.3, where it judges it after
    # the handshake) hung up on the first request.
    if "ALERT" in text.upper() or connected:
        return CERT_REFUSED
    return _NOT_TLS


# Failed TLS exchanges in words (etcd_grpc says the same of gRPC's).
WRONG_CA = "TLS: the server's certificate is not signed by the CA of --ca-cert"
WRONG_HOST = "TLS: the server's certificate does not name this host"
CERT_REFUSED = ("TLS: the server refused the client certificate (none given, or not signed "
                "by a CA it trusts: check --cert/--key)")
_NOT_TLS = "TLS handshake failed: does the endpoint serve TLS?"


class Connection:
    """HTTP connections to one endpoint, kept open and reused (one per concurrent call);
    `token`, etcd's auth token (set by gantryd.etcd), goes with every request."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, timeout: float):
        self.host, self.port = host, port
        self.context = context
        self.timeout = timeout
        self.token: str | None = None
        self._pool = Pool(self._new, timeout, self._unreachable)

    def _new(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.connect()  # (and the TLS handshake)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc, connected=False) from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _headers(self, token: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token and self.token:
            headers["Authorization"] = self.token
        return headers

    def call(self, path: str, body: dict, timeout: float | None = None,
             token: bool = True) -> dict:
        """POST `body` to `path`; etcd's answer (the first message of a stream's). `token`:
        send our auth token (not when asking for a new one)."""
        response, data = self._pool.request("POST", path, json.dumps(body),
                                            self._headers(token), timeout)
        return self._answer(response.status, data)

    def stream(self, path: str, body: dict, headers: dict[str, str] | None = None) -> "Stream":
        """POST `body` to a streaming `path` (watch) on a connection of its own."""
        # A watch waits for events as long as it takes; TCP keepalives find a dead peer.
        conn, response = self._pool.open("POST", path, json.dumps(body),
                                         {**self._headers(), **(headers or {})}, timeout=None)
        if response.status != 200:
            data = response.read()
            conn.close()
            self._answer(response.status, data)  # raises
        sock = conn.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        return Stream(conn, response, self)

    def _answer(self, status: int, data: bytes) -> dict:
        """The first JSON message of an answer, or the error it carries raised."""
        text = data.decode(errors="replace")
        try:
            message = json.loads(text.split("\n", 1)[0]) if text.strip() else {}
        except ValueError:
            message = None
        if not isinstance(message, dict):
            if "CommonName of client" in text:
                raise GatewayUnusable("the user is the client certificate's CN, which etcd "
                                      "does not take through its JSON gateway")
            if status == 404:
                raise GatewayUnusable("etcd's JSON gateway is turned off "
                                      "(--enable-grpc-gateway=false)")
            if "HTTPS server" in text:  # Go's answer to plain HTTP on a TLS listener
                raise Unreachable("the endpoint serves TLS: does the endpoint require TLS "
                                  "(--ca-cert)?")
            raise Unreachable(f"not etcd's JSON gateway (HTTP {status}: {text[:80]!r})")
        error = message.get("error")
        if isinstance(error, dict):  # an error inside a stream
            raise self._refused(int(error.get("grpc_code") or error.get("code") or 2),
                                str(error.get("message", "")))
        if error is not None or status != 200:
            raise self._refused(int(message.get("code") or 2),
                                str(message.get("message") or error or f"HTTP {status}"))
        return message.get("result", message)

    @staticmethod
    def _refused(code: int, message: str) -> Exception:
        if code in _RETRYABLE_CODES:
            return Unreachable(message.removeprefix("etcdserver: ") or _RETRYABLE_CODES[code])
        return Refused(code, message)

    def _unreachable(self, exc: BaseException, connected: bool = True) -> Unreachable:
        """`exc` in words; `connected`: it came after the (TLS) connection was made."""
        if isinstance(exc, ssl.SSLError):
            return Unreachable(_tls_reason(exc, connected), True)
        if isinstance(exc, TimeoutError):
            return Unreachable("timed out")
        if isinstance(exc, ConnectionRefusedError):
            return Unreachable("connection refused")
        if isinstance(exc, (ConnectionResetError, BrokenPipeError,
                            http.client.RemoteDisconnected)):
            if self.context is None:
                return Unreachable("connection closed at once: does the endpoint require TLS "
                                   "(--ca-cert)?")
            if connected:  # TLS 1.3: the server judges our certificate after the handshake
                return Unreachable(CERT_REFUSED, True)
            return Unreachable(_NOT_TLS, True)  # a plain listener hangs up on a TLS hello
        return Unreachable(_short(exc))

    def close(self) -> None:
        self._pool.close()


class Stream(http_pool.Stream):
    """The answers of a streaming request, one JSON message at a time."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 owner: Connection):
        super().__init__(conn, response)
        self._owner = owner

    def __iter__(self) -> Iterator[dict]:
        try:
            for line in self.lines():
                yield self._owner._answer(200, line)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._owner._unreachable(exc) from None
