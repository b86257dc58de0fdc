"""The Docker Engine API over HTTP/1.1, standard library only.

gantry asks the engine for little (inspect, list, create, start, stop, remove, pull, exec, logs,
events) and gantryd asks it every 30 s for as long as a host lives, so the Docker SDK (with
requests and urllib3, a third of a host agent's memory and most of a request's CPU) is not
used for it. The SDK stays for ``docker build`` contexts only (gantry.build), a single-host
command.

Where the engine is: ``base_url`` (``--docker-url``) else ``DOCKER_HOST``, as the docker CLI
reads it: ``unix:///path`` (default ``unix:///var/run/docker.sock``), ``tcp://host:port``
(TLS when ``DOCKER_TLS_VERIFY`` or ``DOCKER_CERT_PATH`` is set: ``ca.pem``, ``cert.pem`` and
``key.pem`` from ``DOCKER_CERT_PATH``, else ``~/.docker``; the server is verified only with
``DOCKER_TLS_VERIFY``), ``http://`` and ``https://``. Requests use the engine's own API
version, asked once (``GET /_ping``).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
import threading
from typing import Any, Iterator
from urllib.parse import quote, urlencode, urlsplit

from .http_pool import Pool, Stream

DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_TIMEOUT = 60.0


class EngineError(Exception):
    """The engine answered with an error; ``explanation`` is its message."""

    def __init__(self, status: int, explanation: str):
        super().__init__(f"{status}: {explanation}")
        self.status = status
        self.explanation = explanation


class NotFound(EngineError):
    """404: no such container, image or exec."""


class Unreachable(Exception):
    """The engine could not be reached or hung up."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _tls_from_env(verify_server: bool) -> ssl.SSLContext:
    where = os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"),
                                                               ".docker")
    if verify_server:
        context = ssl.create_default_context(cafile=os.path.join(where, "ca.pem"))
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert, key = os.path.join(where, "cert.pem"), os.path.join(where, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        context.load_cert_chain(cert, key)
    return context


def where(base_url: str | None = None) -> str:
    """The engine's address in use: ``base_url``, else ``DOCKER_HOST``, else the socket."""
    return base_url or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


class Engine:
    """One Docker engine. Thread-safe: each concurrent request has a connection of its own."""

    def __init__(self, base_url: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.base_url = where(base_url)
        self.timeout = timeout
        self._prefix: str | None = None  # /v<the engine's API version>, once asked
        self._prefix_lock = threading.Lock()
        url = urlsplit(self.base_url)
        context: ssl.SSLContext | None = None
        if url.scheme == "unix":
            socket_path = url.path or DEFAULT_SOCKET
            self._connect_to = lambda t: _UnixConnection(socket_path, t)
        elif url.scheme in ("tcp", "http", "https"):
            if not url.hostname:
                raise ValueError(f"{self.base_url}: no host")
            tls_verify = bool(os.environ.get("DOCKER_TLS_VERIFY"))
            if url.scheme == "https" or (url.scheme == "tcp" and (
                    tls_verify or os.environ.get("DOCKER_CERT_PATH"))):
                context = _tls_from_env(tls_verify)
            host, port = url.hostname, url.port or (2376 if context else 2375)
            self._connect_to = (
                (lambda t: http.client.HTTPSConnection(host, port, timeout=t, context=context))
                if context else (lambda t: http.client.HTTPConnection(host, port, timeout=t)))
        else:
            raise ValueError(f"{self.base_url}: expected unix://, tcp://, http:// or "
                             f"https:// (the engine on this host)")
        self._pool = Pool(self._connect, timeout, self._failed)

    # -- transport ---------------------------------------------------------------------------
    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = self._connect_to(timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._failed(exc) from None
        return conn

    def _failed(self, exc: BaseException) -> Exception:
        if isinstance(exc, TimeoutError):
            return Unreachable(f"{self.base_url}: timed out")
        return Unreachable(f"{self.base_url}: {exc.strerror or exc}" if isinstance(exc, OSError)
                           and exc.strerror else f"{self.base_url}: {exc}")

    def _path(self, path: str, params: dict[str, Any] | None) -> str:
        if self._prefix is None:
            self._negotiate()
        query = {k: _filters(v) if k == "filters" else _param(v)
                 for k, v in (params or {}).items() if v is not None}
        return f"{self._prefix}{path}" + ("?" + urlencode(query) if query else "")

    def _negotiate(self) -> None:
        with self._prefix_lock:
            if self._prefix is None:
                response, data = self._pool.request("GET", "/_ping")
                self._check(response, data)
                version = response.getheader("API-Version")
                self._prefix = f"/v{version}" if version else ""

    @staticmethod
    def _check(response: http.client.HTTPResponse, data: bytes) -> None:
        if response.status < 400:
            return
        text = data.decode(errors="replace").strip()
        try:
            message = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            message = text
        kind = NotFound if response.status == 404 else EngineError
        raise kind(response.status, str(message) or f"HTTP {response.status}")

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None, headers: dict[str, str] | None = None,
             timeout: float | None = None) -> Any:
        """One request; its JSON answer (None for an empty one). EngineError (NotFound for a
        404) when the engine refuses, Unreachable when it cannot be asked."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        response, data = self._pool.request(
            method, self._path(path, params),
            None if body is None else json.dumps(body), all_headers, timeout)
        self._check(response, data)
        if not data.strip():
            return None
        if "json" not in (response.getheader("Content-Type") or ""):
            return data
        return json.loads(data)

    def stream(self, method: str, path: str, params: dict[str, Any] | None = None,
               body: Any = None, headers: dict[str, str] | None = None,
               timeout: float | None = None) -> Stream:
        """A streaming request on a connection of its own; ``timeout`` per read (None: wait
        as long as it takes). Close it from its reading thread; ``interrupt()`` from another."""
        conn, response = self._pool.open(
            method, self._path(path, params), None if body is None else json.dumps(body),
            {"Content-Type": "application/json", **(headers or {})}, timeout)
        if response.status >= 400:
            try:
                self._check(response, response.read())
            finally:
                conn.close()
        return Stream(conn, response)

    def json_stream(self, method: str, path: str, **kwargs: Any) -> "JsonStream":
        """:meth:`stream` whose answer is one JSON object per line (pull, events)."""
        return JsonStream(self.stream(method, path, **kwargs), self._failed)

    def close(self) -> None:
        self._pool.close()

    # -- the calls gantry makes ------------------------------------------------------------------
    def ping(self) -> None:
        """Does the engine answer? (Unreachable / EngineError if not.)"""
        self._prefix = None
        self._negotiate()

    def events(self, filters: dict[str, Any]) -> "JsonStream":
        """Docker's event stream (``docker events --filter``), until closed."""
        return self.json_stream("GET", "/events", params={"filters": filters}, timeout=None)

    def logs(self, container_id: str, *, follow: bool, tail: int | str = "all",
             since: float | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> "LogStream":
        """A container's output (stdout and stderr, in order) as it comes."""
        tty = bool((self.call("GET", f"/containers/{quote_name(container_id)}/json")
                    .get("Config") or {}).get("Tty"))
        params = {"stdout": True, "stderr": True, "follow": follow, "tail": tail,
                  "since": since}
        return LogStream(self.stream("GET", f"/containers/{quote_name(container_id)}/logs",
                                     params=params, timeout=None if follow else timeout),
                         multiplexed=not tty, failed=self._failed)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _filters(filters: dict[str, Any]) -> str:
    """``filters`` as the engine takes them: every value a list of strings."""
    def values(v: Any) -> list[str]:
        if isinstance(v, bool):
            return ["true" if v else "false"]
        return [str(item) for item in (v if isinstance(v, list) else [v])]
    return json.dumps({k: values(v) for k, v in filters.items()})


def quote_name(name: str) -> str:
    """A name in a path (image references keep their slashes and colons)."""
    return quote(name, safe="/:")


class JsonStream:
    """The JSON objects of a streaming answer, one per line; ``close()`` from any thread."""

    def __init__(self, stream: Stream, failed: Any):
        self._stream, self._failed = stream, failed
        self._reader: threading.Thread | None = None
        self._closed = False

    def __iter__(self) -> Iterator[dict]:
        self._reader = threading.current_thread()
        try:
            for line in self._stream.lines():
                yield json.loads(line)
        except (OSError, http.client.HTTPException) as exc:
            if not self._closed:  # closed by us: it just ends
                raise self._failed(exc) from None
        finally:
            self._stream.close()

    def close(self) -> None:
        self._closed = True
        if self._reader is None or self._reader is threading.current_thread():
            self._stream.close()
        else:
            self._stream.interrupt()


class LogStream(JsonStream):
    """A container's output as bytes, taken out of the engine's stdout/stderr frames."""

    def __init__(self, stream: Stream, multiplexed: bool, failed: Any):
        super().__init__(stream, failed)
        self._multiplexed = multiplexed

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        self._reader = threading.current_thread()
        try:
            if not self._multiplexed:
                yield from self._stream.chunks()
                return
            response = self._stream.response
            while True:
                head = response.read(8)
                if len(head) < 8:
                    return
                size = struct.unpack(">I", head[4:])[0]
                data = response.read(size)
                if data:
                    yield data
                if len(data) < size:
                    return
        except (OSError, http.client.HTTPException) as exc:
            if not self._closed:
                raise self._failed(exc) from None
        finally:
            self._stream.close()
