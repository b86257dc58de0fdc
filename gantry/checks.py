"""Ready, health and termination checks.

A check (``gantry.config.Check``) is one of:

* ``http``: GET ``path`` on the container port answers 2xx;
* ``tcp``: a TCP connect to the container port succeeds;
* ``docker``: Docker's own HEALTHCHECK reports ``healthy``.

Each probe has its own timeout (``check.timeout``). :func:`wait_for_checks` retries every check at
its ``interval`` until it passes or the overall deadline expires, and stops at once with
:class:`~gantry.errors.ContainerExited` when the container exits meanwhile (no point waiting for
a dead container). :func:`check_once` runs each check a single time (monitor).

Probes go to the address the proxy uses (``Runtime.address``): the published loopback port by
default.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Any, Sequence

from .errors import Cancelled, CheckFailed, ContainerExited
from .progress import Reporter
from .runtime import ContainerInfo, Runtime

# Progress line while waiting, at most this often.
REPORT_EVERY = 5.0
# How long a tcp probe through a published port watches for an immediate close.
TCP_SETTLE = 0.25


class ProbeFailed(Exception):
    """One probe did not pass. ``final``: retrying cannot help (e.g. no HEALTHCHECK)."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def describe(check: Any) -> str:
    if check.kind == "http":
        return f"http :{check.port}{check.path}"
    if check.kind == "tcp":
        return f"tcp :{check.port}"
    return "docker healthcheck"


def probe(check: Any, runtime: Runtime, info: ContainerInfo) -> None:
    """Run one probe against a (running) container; raise ProbeFailed when it does not pass."""
    if check.kind == "docker":
        if info.health is None:
            raise ProbeFailed("the image defines no HEALTHCHECK", final=True)
        if info.health != "healthy":
            raise ProbeFailed(f"docker health is {info.health}")
        return
    addr = runtime.address(info, check.port)
    if addr is None:
        raise ProbeFailed(f"container port {check.port} is not reachable (not published?)")
    timeout = float(check.timeout)
    if check.kind == "tcp":
        _probe_tcp(addr, timeout, runtime.backend_mode == "loopback")
        return
    if check.kind == "http":
        conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
        try:
            conn.request("GET", check.path or "/", headers={"User-Agent": "gantry-check"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            raise ProbeFailed(f"GET {check.path}: {exc or type(exc).__name__}") from None
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise ProbeFailed(f"GET {check.path} answered {status}")
        return
    raise ProbeFailed(f"unknown check kind {check.kind!r}", final=True)


def _probe_tcp(addr: tuple[str, int], timeout: float, behind_docker_proxy: bool) -> None:
    start = time.monotonic()
    try:
        sock = socket.create_connection(addr, timeout=timeout)
    except OSError as exc:
        raise ProbeFailed(f"connect to {addr[0]}:{addr[1]}: {exc}") from None
    try:
        if not behind_docker_proxy:
            return
        # A published port accepts connections (docker-proxy) even when nothing listens in
        # the container; it then closes them at once. An open connection that stays open
        # (or sends a banner) for a moment proves a real listener.
        sock.settimeout(max(0.05, min(TCP_SETTLE, timeout - (time.monotonic() - start))))
        try:
            if sock.recv(1, socket.MSG_PEEK) == b"":
                raise ProbeFailed(f"{addr[0]}:{addr[1]} closed the connection at once "
                                  "(nothing listens in the container)")
        except socket.timeout:
            pass
        except OSError as exc:
            raise ProbeFailed(f"{addr[0]}:{addr[1]}: {exc}") from None
    finally:
        sock.close()


def _alive(runtime: Runtime, container_id: str, what: str) -> ContainerInfo:
    info = runtime.inspect(container_id)
    if info is None:
        raise ContainerExited(f"container {container_id[:12]} disappeared during {what} checks")
    if not info.running:
        tail = runtime.logs_tail(container_id)
        detail = f"; last output: {tail.splitlines()[-1]}" if tail else ""
        raise ContainerExited(
            f"container {info.short_id} exited (code {info.exit_code}) during {what} "
            f"checks{detail}",
            exit_code=info.exit_code,
        )
    return info


def wait_for_checks(
    checks: Sequence[Any],
    runtime: Runtime,
    container_id: str,
    timeout: float,
    reporter: Reporter,
    what: str = "ready",
    cancel: threading.Event | None = None,
) -> None:
    """Wait until every check passes, in order, within ``timeout`` seconds overall.

    With no checks, only verifies that the container is (still) running. ``cancel`` set
    between probes: Cancelled.
    """
    deadline = time.monotonic() + timeout
    _alive(runtime, container_id, what)
    for check in checks:
        name = describe(check)
        last_report = time.monotonic()
        while True:
            info = _alive(runtime, container_id, what)
            try:
                probe(check, runtime, info)
                break
            except ProbeFailed as exc:
                if exc.final:
                    raise CheckFailed(f"{what} check {name} cannot pass: {exc}") from None
                now = time.monotonic()
                if now + float(check.interval) > deadline:
                    raise CheckFailed(
                        f"{what} check {name} did not pass within {timeout:g}s (last: {exc})"
                    ) from None
                if now - last_report >= REPORT_EVERY:
                    reporter.waiting(f"waiting for {what} check {name} ({exc})")
                    last_report = now
            if cancel is None:
                time.sleep(float(check.interval))
            elif cancel.wait(float(check.interval)):
                raise Cancelled(f"cancelled during the {what} checks of {container_id[:12]}")
    _alive(runtime, container_id, what)


def check_once(checks: Sequence[Any], runtime: Runtime, container_id: str) -> list[str]:
    """Run every check once; the failures as messages (empty: healthy).

    A container that is not running fails regardless of the checks.
    """
    try:
        info = _alive(runtime, container_id, "health")
    except ContainerExited as exc:
        return [str(exc)]
    return probe_all(checks, runtime, info)


def probe_all(checks: Sequence[Any], runtime: Runtime, info: ContainerInfo) -> list[str]:
    """Run every check once against a container known to run (`info`); the failures."""
    failures = []
    for check in checks:
        try:
            probe(check, runtime, info)
        except ProbeFailed as exc:
            failures.append(f"{describe(check)}: {exc}")
    return failures
