"""Blocking client of the proxy's control API, for gantry, gantryd and the CLI.

Only the standard library: importing it does not pull in Twisted.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import Any, Sequence
from urllib.parse import quote

# EX_ALREADY_RUNNING: imported from here by the tests.
from proxy.detach import EX_ALREADY_RUNNING, Exited, start_detached, wait_answering  # noqa: F401
from proxy.errors import ProxyError, ProxyNotRunning  # noqa: F401 - raised here, caught by users
from proxy.paths import default_socket_path, default_state_path, log_path_for, \
    retiring_sockets


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ProxyClient:
    """One call per method, one connection per call (the daemon may restart in between)."""

    def __init__(self, socket_path: str | None = None, timeout: float = 10.0):
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None,
              timeout: float | None = None) -> Any:
        conn = _UnixConnection(self.socket_path, timeout or self.timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise ProxyNotRunning(
                    f"gantry-proxy is not running: nothing answers on {self.socket_path} ({e})"
                ) from None
            data = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise ProxyError(f"gantry-proxy on {self.socket_path}: {method} {path}: {e}") \
                    from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ProxyError(f"gantry-proxy answered {response.status} with non-JSON "
                             f"{raw[:200]!r}", response.status) from None
        if response.status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise ProxyError(message or f"HTTP {response.status}", response.status)
        return answer

    def ping(self) -> dict[str, Any]:
        """`{"pid", "version", "options"}` of the running daemon (`options`: its run options,
        see proxy.upgrade); ProxyNotRunning if none."""
        return self._call("GET", "/ping")

    def answers(self) -> dict[str, Any] | None:
        """`ping()`, or None when nothing answers."""
        try:
            return self.ping()
        except ProxyNotRunning:
            return None

    def handover(self) -> dict[str, Any]:
        """Ask the daemon to hand its routes over to the caller (a new daemon, see
        proxy.upgrade): it stops accepting and frees its lock and socket, answering
        `{"pid", "live"}`, then exits once its live connections are done."""
        return self._call("POST", "/handover")

    def routes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/routes")["routes"]

    def route(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/routes/{quote(name, safe='')}")

    def set_route(self, name: str, listen: str, backend: str | None = None, kind: str = "tcp",
                  idle_timeout: float | None = None,
                  backends: Sequence[tuple[str, int]] | None = None,
                  sticky: bool = False) -> dict[str, Any]:
        """Create or switch a route atomically; answers `{"previous", "draining", "route"}`.

        `backend` sends every new connection to one address; `backends` instead splits them
        by weight (`[(address, weight), ...]`, the first is the primary). Backends that leave
        the active set start draining. `sticky` keeps a client address on one backend.
        """
        body: dict[str, Any] = {"listen": listen, "kind": kind, "idleTimeout": idle_timeout}
        if backends is not None:
            body["backends"] = [{"address": a, "weight": w} for a, w in backends]
            body["sticky"] = sticky
        else:
            body["backend"] = backend
        return self._call("PUT", self._path(name), body)

    def pause(self, name: str, max_pause: float = 30.0) -> dict[str, Any]:
        """Hold new connections of a route (not connected to any backend) until `resume`;
        each is closed after `max_pause` s (http routes: answered 504 first)."""
        return self._call("POST", self._path(name, "pause"), {"maxPause": max_pause})

    def resume(self, name: str) -> dict[str, Any]:
        """Connect the held connections, in order, to the route's current backend(s)."""
        return self._call("POST", self._path(name, "resume"), {})

    def maintenance(self, name: str, enabled: bool, message: str | None = None) -> dict[str, Any]:
        """Turn maintenance on (http: new connections answered 503 with `message`; tcp: closed)
        or off."""
        return self._call("POST", self._path(name, "maintenance"),
                          {"enabled": enabled, "message": message})

    @staticmethod
    def _path(name: str, action: str | None = None) -> str:
        path = f"/routes/{quote(name, safe='')}"
        return f"{path}/{action}" if action else path

    def remove_route(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/routes/{quote(name, safe='')}")

    def drain(self, name: str, backend: str, timeout: float,
              close: bool = False) -> dict[str, Any]:
        """Wait (blocking, at most `timeout` s) until `backend` has no live connection on the
        route; answers `{"drained", "live", "closed"}`.

        Connections a daemon that handed over (`gantry-proxy upgrade`) still carries count
        too: each such daemon answers on a socket of its own until it exits
        (proxy.paths.retiring_sockets), and is drained in the same time budget.
        """
        started = time.monotonic()
        answer = self._drain_one(name, backend, timeout, close)
        for path in retiring_sockets(self.socket_path):
            remaining = max(0.0, float(timeout) - (time.monotonic() - started))
            try:
                more = ProxyClient(path, self.timeout)._drain_one(name, backend, remaining,
                                                                 close)
            except ProxyNotRunning:  # it exited meanwhile (or was killed: a stale file)
                continue
            except ProxyError as e:
                if e.status == 404:  # it had no such route
                    continue
                raise
            answer = {"drained": answer["drained"] and more["drained"],
                      "live": answer["live"] + more["live"],
                      "closed": answer["closed"] + more["closed"]}
        return answer

    def _drain_one(self, name: str, backend: str, timeout: float,
                   close: bool) -> dict[str, Any]:
        body = {"backend": backend, "timeout": timeout, "close": close}
        return self._call("POST", self._path(name, "drain"), body,
                          timeout=self._wait_timeout(timeout))

    def _wait_timeout(self, timeout: Any) -> float:
        """Socket timeout of a long poll of `timeout` s; the daemon rejects bad values (400),
        so a NaN, negative or huge one must not break the socket first."""
        try:
            total = float(timeout) + self.timeout
        except (TypeError, ValueError, OverflowError):
            return self.timeout
        return min(total, 1e7) if total > 0 else self.timeout  # NaN > 0 is False


def ensure_running(socket_path: str | None = None, state_path: str | None = None,
                   timeout: float = 10.0, extra_args: Sequence[str] = ()) -> ProxyClient:
    """Return a client of a running proxy, starting a detached one if the socket is silent.

    The new daemon runs in its own session (it outlives the caller) and logs to a file
    beside the state file. Two callers racing here are safe: the daemon holds a lock on its
    state file and the loser exits.
    """
    client = ProxyClient(socket_path)
    try:
        client.ping()
        return client
    except ProxyNotRunning:
        pass
    state_path = state_path or default_state_path()
    log_path = log_path_for(state_path)
    command = [sys.executable, "-m", "proxy", "run", "--socket", client.socket_path,
               "--state", state_path, "--log-file", log_path, *extra_args]
    process = start_detached(command, log_path)
    try:
        return wait_answering(process, lambda: client if client.answers() else None, timeout)
    except Exited as e:
        raise ProxyError(f"gantry-proxy exited with status {e.status} before answering on "
                         f"{client.socket_path}; see {log_path}") from None
    except TimeoutError:
        raise ProxyNotRunning(f"gantry-proxy started (pid {process.pid}) but did not answer "
                              f"on {client.socket_path} within {timeout:g}s; see {log_path}"
                              ) from None
