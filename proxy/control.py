"""The control API: HTTP/JSON over a unix socket (see docs/proxy.md for the calls)."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

import proxy
from proxy.errors import BadRequest, NotFound, RouteError
from proxy.http import HTTPFactory, Request, Response
from proxy.router import Router

log = logging.getLogger("proxy.control")


class ControlAPI:
    """Answers `/ping`, `/handover`, `/routes`, `/routes/<name>`, `/routes/<name>/...`."""

    def __init__(self, router: Router, options: dict[str, Any] | None = None,
                 handover: Callable[[], Awaitable[dict[str, Any]]] | None = None):
        self.router = router
        self.options = options or {}  # the daemon's run options, for `upgrade`
        self.handover = handover

    def __call__(self, request: Request) -> defer.Deferred[Response]:
        d = defer.ensureDeferred(self._dispatch(request))
        d.addCallbacks(lambda result: _json(200, result), lambda f: self._fail(request, f))
        return d

    async def _dispatch(self, request: Request) -> Any:
        method = request.method
        try:
            parts = [p.decode() for p in request.segments]
        except UnicodeDecodeError:
            raise BadRequest("the path is not UTF-8") from None
        if parts and parts[-1] == "":
            parts.pop()
        if parts == ["ping"] and method == "GET":
            return {"pid": os.getpid(), "version": proxy.__version__, "options": self.options}
        if parts == ["handover"] and method == "POST" and self.handover is not None:
            return await self.handover()
        if parts == ["routes"] and method == "GET":
            return {"routes": self.router.snapshot()}
        if len(parts) == 2 and parts[0] == "routes":
            name = parts[1]
            if method == "GET":
                return self.router.get(name).to_dict()
            if method == "PUT":
                return await self.router.put(name, _json_body(request))
            if method == "DELETE":
                return await self.router.remove(name)
        if len(parts) == 3 and parts[0] == "routes" and method == "POST":
            action = parts[2]
            if action == "drain":
                return await self.router.drain(parts[1], _json_body(request))
            if action in ("pause", "resume", "maintenance"):
                return getattr(self.router, action)(parts[1], _json_body(request))
        raise NotFound(f"no such call: {method} /{'/'.join(parts)}")

    def _fail(self, request: Request, failure: Any) -> Response:
        if failure.check(RouteError):
            return _json(failure.value.status, {"error": str(failure.value)})
        log.error("control request %s %s failed", request.method, request.target,
                  exc_info=failure.value)
        return _json(500, {"error": f"internal error: {failure.value!r}"})


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode() + b"\n")


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None


def listen_control(reactor: Any, router: Router, path: str,
                   options: dict[str, Any] | None = None,
                   handover: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                   inherited: socket.socket | None = None) -> Any:
    """Listen on the unix socket `path` (mode 0600, parent created 0700 if missing), or
    adopt `inherited`, the socket systemd listens on there (see proxy.listeners).

    A stale socket file (nobody answers) is replaced; a live one means another proxy runs.
    """
    site = HTTPFactory(ControlAPI(router, options, handover))
    if inherited is not None:
        inherited.setblocking(False)
        with inherited:
            port = reactor.adoptStreamPort(inherited.fileno(), socket.AF_UNIX, site)
        # The socket file is systemd's, for the next process too: a name in the abstract
        # namespace keeps Twisted from unlinking it when the Port closes.
        port._bindPath = b"\0"
        return port
    sock_path = Path(path)
    sock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sock_path.exists() or sock_path.is_symlink():
        if not stat.S_ISSOCK(sock_path.lstat().st_mode):
            raise SystemExit(f"gantry-proxy: {path} exists and is not a socket")
        if _answers(path):
            raise SystemExit(f"gantry-proxy: another proxy already answers on {path}")
        sock_path.unlink()
    # The umask closes the window between bind() and chmod() in which the socket is open.
    old_umask = os.umask(0o177)
    try:
        return reactor.listenUNIX(path, site, mode=0o600)
    finally:
        os.umask(old_umask)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
            return True
        except OSError:
            return False

