"""The local status endpoint of ``gantry watch --listen ADDR:PORT`` (read-only, JSON).

* ``GET /v1/state``: the spec files and, per component, what is desired, the live container,
  its image, the status, since when, the last error and the last attempt.
* ``GET /v1/wait_for?component=NAME&image=IMAGE&timeout=SECONDS`` (``project=P`` too, or
  ``component=P/NAME``, when a name is in several projects): 200 once the component's live
  container runs IMAGE (a repo:tag as the spec says it, a pinned ``repo@sha256:...`` or a bare
  digest; no image: the spec as last read) -- it passed its ready checks, the routes point at
  it; 409 when the last attempt at that image failed; 504 at the timeout (default 30 s).

The standard library's threading HTTP server, one thread per request (a wait_for blocks its
own thread on :class:`WatchState`'s condition), keeps ``gantry`` free of a reactor: the
watcher itself is one blocking loop. Bind it to loopback: it has no authentication.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .watch_state import MAX_WAIT, WatchState

log = logging.getLogger(__name__)

DEFAULT_WAIT = 30.0
WAIT_PARAMS = {"component", "image", "timeout", "project"}


class BadRequest(Exception):
    pass


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8090), got {text!r}")
    return host, int(port)


def _wait_args(query: str) -> dict[str, Any]:
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - WAIT_PARAMS)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (known: "
                         f"{', '.join(sorted(WAIT_PARAMS))})")
    if any(len(v) > 1 for v in params.values()):
        raise BadRequest("each parameter at most once")
    one = {k: v[0] for k, v in params.items()}
    component, project = one.get("component", ""), one.get("project") or None
    if not component:
        raise BadRequest("component is required")
    if "/" in component:
        if project:
            raise BadRequest("give the project either in component=P/NAME or in project=")
        project, _, component = component.partition("/")
    try:
        timeout = float(one.get("timeout", DEFAULT_WAIT))
    except ValueError:
        raise BadRequest(f"timeout: expected seconds, got {one['timeout']!r}") from None
    if not 0 <= timeout <= MAX_WAIT:
        raise BadRequest(f"timeout: expected 0 to {MAX_WAIT:g} seconds, got {timeout:g}")
    return {"project": project, "component": component, "image": one.get("image") or None,
            "timeout": timeout}


class _Handler(BaseHTTPRequestHandler):
    server: "StatusServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        url = urlsplit(self.path)
        if url.path == "/v1/state":
            self._send(200, self.server.state.snapshot())
        elif url.path == "/v1/wait_for":
            try:
                args = _wait_args(url.query)
            except BadRequest as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(*self.server.state.wait_for(**args))
        else:
            self._send(404, {"error": f"no such path {url.path!r} (/v1/state, /v1/wait_for)"})

    def _refuse(self) -> None:
        self._send(405, {"error": "only GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: WatchState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        super().__init__(address, _Handler)


def serve(address: tuple[str, int], state: WatchState) -> StatusServer:
    """Start the endpoint in a thread of its own; ``shutdown()`` ends it. OSError if the
    address cannot be bound."""
    server = StatusServer(address, state)
    threading.Thread(target=server.serve_forever, name="watch-http", daemon=True).start()
    return server
