"""Blocking client of the proxy's control API, for gantry, gantryd and the CLI.

Only the standard library: importing it does not pull in Twisted.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from proxy.paths import default_socket_path, default_state_path, log_path_for

# Exit status of a daemon that found another one holding the state lock (EX_TEMPFAIL).
EX_ALREADY_RUNNING = 75


class ProxyError(Exception):
    """The proxy answered with an error; `status` is the HTTP status (0 if none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class ProxyNotRunning(ProxyError):
    """Nothing answers on the control socket."""


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
        """`{"pid", "version"}` of the running daemon; ProxyNotRunning if none."""
        return self._call("GET", "/ping")

    def routes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/routes")["routes"]

    def route(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/routes/{quote(name, safe='')}")

    def set_route(self, name: str, listen: str, backend: str, kind: str = "tcp",
                  idle_timeout: float | None = None) -> dict[str, Any]:
        """Create or switch a route atomically; answers `{"previous", "route"}`."""
        body = {"listen": listen, "backend": backend, "kind": kind, "idleTimeout": idle_timeout}
        return self._call("PUT", f"/routes/{quote(name, safe='')}", body)

    def remove_route(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/routes/{quote(name, safe='')}")

    def drain(self, name: str, backend: str, timeout: float,
              close: bool = False) -> dict[str, Any]:
        """Wait (blocking, at most `timeout` s) until `backend` has no live connection on the
        route; answers `{"drained", "live", "closed"}`."""
        body = {"backend": backend, "timeout": timeout, "close": close}
        return self._call("POST", f"/routes/{quote(name, safe='')}/drain", body,
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
    Path(log_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [sys.executable, "-m", "proxy", "run", "--socket", client.socket_path,
               "--state", state_path, "--log-file", log_path, *extra_args]
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=devnull, stdout=log, stderr=log,
                                   start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return client
        except ProxyNotRunning:
            pass
        # EX_TEMPFAIL: it lost a start race to another daemon, which will answer soon.
        if process.poll() is not None and process.returncode != EX_ALREADY_RUNNING:
            raise ProxyError(f"gantry-proxy exited with status {process.returncode} "
                             f"before answering on {client.socket_path}; "
                             f"see {log_path}")
        if time.monotonic() > deadline:
            raise ProxyNotRunning(f"gantry-proxy started (pid {process.pid}) but did not answer "
                                  f"on {client.socket_path} within {timeout:g}s; see {log_path}")
        time.sleep(0.05)
