"""Helpers of the gantry lifecycle tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any, Callable

import docker.errors

import rig  # tests/conftest.py puts scripts/ on sys.path
from rig import wait_for  # noqa: F401  (re-exported to the tests)
from gantry.config import Component, parse_config
from gantry.progress import Reporter
from loadgen import request
from proxy.client import ProxyClient

MACHINE = "test-machine"




class RecordingReporter(Reporter):
    """Keeps every message, so tests can wait for a step or show what happened."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        self.lines.append(message)

    waiting = warning = step

    def draining(self, container_id: str, live: int, remaining: float) -> None:
        self.lines.append(f"draining {container_id[:12]}: {live} live")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


def component_dict(name: str = "web", tag: str = "v1", external: int | None = None,
                   repo: str | None = None, **extra: Any) -> dict[str, Any]:
    """A component on a free external port with the short test timeouts."""
    check = {"kind": "http", "port": 8080, "path": "/health", "interval": 0.2, "timeout": 1}
    data: dict[str, Any] = {
        "name": name,
        "repo": repo or rig.TEST_REPO,
        "tag": tag,
        "ports": [{"external": external or rig.free_port(), "container": 8080, "kind": "http"}],
        "readyChecks": [check],
        "healthChecks": [check],
        "healthFailures": 2,
        "readyTimeout": 10,
        "drainTimeout": 5,
        "stopTimeout": 2,
    }
    data.update(extra)
    return data


def make_component(**kwargs: Any) -> Component:
    return parse_config({"components": [component_dict(**kwargs)]}).components[0]


def variant(c: Component, **changes: Any) -> Component:
    """The same component (same port) with changed fields, re-validated."""
    data = c.to_dict()
    data.update(changes)
    return parse_config({"components": [data]}).components[0]


def external_port(c: Component) -> int:
    return c.ports[0].external


def target(c: Component) -> tuple[str, int]:
    """Where clients reach the component through the proxy."""
    return ("127.0.0.1", external_port(c))


def project_containers(docker_client, project: str) -> list:
    """Every container labelled with the project, running or not."""
    return docker_client.containers.list(all=True, ignore_removed=True,
                                         filters={"label": f"io.gantry.project={project}"})


def holds_for(predicate: Callable[[], Any], seconds: float, what: str,
              interval: float = 0.05) -> int:
    """Poll ``predicate`` for ``seconds``; AssertionError the first time it is false. Answers
    how many times it was seen true (a sleep that also proves a condition throughout)."""
    deadline = time.monotonic() + seconds
    seen = 0
    while time.monotonic() < deadline:
        if not predicate():
            raise AssertionError(f"{what} stopped holding after {seen} checks")
        seen += 1
        time.sleep(interval)
    return seen


def route_of(proxy: ProxyClient, project: str, c: Component) -> dict | None:
    name = f"{project}.{c.name}.{external_port(c)}"
    return next((r for r in proxy.routes() if r["name"] == name), None)


def live_by_backend(proxy: ProxyClient, project: str, c: Component) -> dict[str, int]:
    route = route_of(proxy, project, c) or {}
    return {b["address"]: b["live"] for b in route.get("backends", ())}


def backend_of(proxy: ProxyClient, project: str, c: Component, address: str) -> dict | None:
    """The proxy's entry for one backend address of the component's route."""
    route = route_of(proxy, project, c) or {}
    return next((b for b in route.get("backends", ()) if b["address"] == address), None)


class SlowRequest:
    """One ``/cgi-bin/slow?s=N`` request through the proxy, in a thread of its own.

    ``in_flight()`` is exact (set when the response was read or the request failed), so a
    test can prove that what it observed happened while the request was still being served:
    observe, then ``assert_in_flight`` -- everything observed before that was observed during
    the request."""

    def __init__(self, where: tuple[str, int], seconds: float) -> None:
        self.seconds = seconds
        self.result: tuple[bool, str] | None = None
        self._done = threading.Event()
        # The client timeout outlasts the request, so a failure means the request was cut.
        self._thread = threading.Thread(
            target=self._run, args=(where, f"/cgi-bin/slow?s={seconds:g}", seconds + 30),
            daemon=True, name="slow-request")
        self._thread.start()

    def _run(self, where: tuple[str, int], path: str, timeout: float) -> None:
        try:
            self.result = request(where, path, timeout)
        finally:
            self._done.set()

    def in_flight(self) -> bool:
        return not self._done.is_set()

    def assert_in_flight(self, when: str) -> None:
        if not self.in_flight():
            raise AssertionError(f"the {self.seconds:g}s slow request ended ({self.result}) "
                                 f"before {when}: the test proves nothing (machine too slow?)")

    def wait(self, timeout: float) -> tuple[bool, str]:
        if not self._done.wait(timeout):
            raise AssertionError(f"the slow request did not end within {timeout:g}s")
        assert self.result is not None
        return self.result


def deploy_and_hold(life: Any, proxy: ProxyClient, project: str, v1: Component,
                     seconds: float = 10) -> tuple[Any, str, SlowRequest]:
    """Deploy ``v1`` and start a slow request on it, returned once the proxy counts it live
    on v1's backend: (the container, its backend, the request)."""
    first = life.update(v1).container
    (backend,) = first.backends
    slow = SlowRequest(target(v1), seconds)
    wait_for(lambda: live_by_backend(proxy, project, v1).get(backend) == 1, 10,
             "the proxy to count the slow request on v1")
    return first, backend, slow


class Background:
    """``fn()`` in a thread; ``wait`` answers its result or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any], name: str = "background") -> None:
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # handed to the test thread
            self._error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self._thread.name} did not end within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._result


def forget_local_images(docker_client, repo: str) -> None:
    """Remove every local tag and digest reference of ``repo`` (by reference, never by image
    id, so other repos sharing the same image -- the session's test images -- keep theirs)."""
    for image in docker_client.images.list():
        refs = [t for t in image.tags if t.rpartition(":")[0] == repo]
        refs += [d for d in image.attrs.get("RepoDigests") or () if d.partition("@")[0] == repo]
        for ref in refs:
            try:
                docker_client.images.remove(ref, force=True)
            except docker.errors.ImageNotFound:
                pass  # untagging the last tag of a repo drops its digest references too
    left = [r for image in docker_client.images.list()
            for r in (*image.tags, *(image.attrs.get("RepoDigests") or ()))
            if r.startswith(repo + ":") or r.startswith(repo + "@")]
    assert not left, f"local references of {repo} left: {left}"


class Cli:
    """Runs ``python -m gantry`` as a subprocess in a project directory."""

    def __init__(self, workdir: Path, project: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.project = project
        self.env = {**os.environ, **env}

    def write_config(self, *components: dict[str, Any]) -> Path:
        path = self.workdir / ".gantry"
        path.write_text(json.dumps({"components": list(components)}, indent=2))
        return path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gantry", *args, "-p", self.project,
                "--machine", MACHINE, "--proxy-bind", "127.0.0.1"]

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=self.workdir, env={**self.env, **env},
                              text=True, capture_output=True, timeout=timeout)

    def spawn(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.workdir, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def run_in_pty(self, *args: str, timeout: float = 60,
                   columns: int = 200) -> tuple[int, str]:
        """Run with a pseudo-terminal (``columns`` wide) as stdin/stdout/stderr, as from an
        interactive shell: (exit status, everything it wrote, escape sequences included)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        proc = subprocess.Popen(self.argv(*args), cwd=self.workdir, env=self.env,
                                stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        out = bytearray()
        try:
            while True:
                ready, _, _ = select.select([master], [], [], timeout)
                if not ready:
                    raise AssertionError(f"gantry {args} wrote nothing for {timeout:g}s")
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal's other side is gone
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            os.close(master)
        return proc.wait(timeout), out.decode(errors="replace")


def build_unique_image(docker_client, base: str, repo: str, tag: str) -> str:
    """``base`` plus a layer of its own (random bytes), pushed as ``repo:tag``: pulling it
    downloads that layer for real (the others already exist here). Answers the reference."""
    with tempfile.TemporaryDirectory(prefix="gantry-image-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(f"FROM {base}\nCOPY unique /unique\n")
        (Path(ctx) / "unique").write_bytes(os.urandom(2_000_000))
        docker_client.images.build(path=ctx, tag=f"{repo}:{tag}")
    for event in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    return f"{repo}:{tag}"
