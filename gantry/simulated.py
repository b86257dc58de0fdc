"""A stand-in for the Docker runtime, for fleet benchmarks of many hosts on one machine.

``gantryd run`` uses it instead of the Docker engine when ``GANTRY_SIMULATED_RUNTIME`` is set
(only ``scripts/bench/fleet --light`` sets it): everything else stays real (etcd, the daemon,
its slots, the proxy and its routes, the ready checks over TCP). A "container" is a small
HTTP listener inside the daemon's process answering ``200 OK`` to any request, on an
ephemeral loopback port, so the proxy and the checks reach it as they reach a published port.

The variable sets the engine's times, in seconds (``start=0.3,ready=0.01,stop=0.2``):
``start`` is how long ``docker start`` blocks, ``ready`` how long the app then takes to
listen, ``stop`` how long ``docker stop`` blocks. ``fail=stop`` (or ``fail=remove``) makes
that engine call fail, for tests of that fault. Images are always present (no pulls).
Every container operation is logged (logger ``gantry.simulated``: ``create <id>``, ``start``,
``kill``, ``die``, ``stop``, ``destroy``) with the same names as Docker's events, which the
daemon also receives through ``client.events()``.

State lives in the process: a restarted daemon finds no containers (the bench never restarts
one).
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from . import labels as L
from .errors import DockerFailed, GantryError
from .runtime import LOOPBACK, ContainerInfo, Runtime

log = logging.getLogger("gantry.simulated")

ENV = "GANTRY_SIMULATED_RUNTIME"
DEFAULTS = {"start": 0.3, "ready": 0.01, "stop": 0.2}
FAULTS = ("stop", "remove")
_ANSWER = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
           b"Connection: close\r\n\r\nok\n")


def parse_times(text: str) -> dict[str, Any]:
    """``start=0.3,ready=0.01,stop=0.2`` (any subset, and ``fail=stop|remove``) -> the
    SimulatedRuntime keywords; ValueError naming what is wrong."""
    times: dict[str, Any] = dict(DEFAULTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if key == "fail" and value in FAULTS:
            times[key] = value
            continue
        if not sep or key not in DEFAULTS:
            raise ValueError(f"{ENV}: {part!r}: expected start=S, ready=S, stop=S (seconds) "
                             f"or fail={'|'.join(FAULTS)}, comma separated")
        try:
            times[key] = float(value)
        except ValueError:
            raise ValueError(f"{ENV}: {key}: expected seconds, not {value!r}") from None
        if not 0 <= times[key] <= 60:
            raise ValueError(f"{ENV}: {key}: expected 0..60 seconds, not {value}")
    return times


def from_env() -> "SimulatedRuntime | None":
    """The stand-in when ``GANTRY_SIMULATED_RUNTIME`` is set (``1`` or times), else None."""
    text = os.environ.get(ENV)
    if text is None or text.strip() in ("", "0"):
        return None
    try:
        return SimulatedRuntime(**parse_times("" if text.strip() == "1" else text))
    except ValueError as exc:
        raise GantryError(str(exc)) from None


def _stamp() -> str:
    now = time.time()
    whole = datetime.fromtimestamp(int(now), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{int((now % 1) * 1e9):09d}Z"  # Docker's RFC 3339 with nanoseconds


@dataclass
class _Container:
    info: ContainerInfo
    sock: socket.socket | None = None
    threads: list[threading.Thread] = field(default_factory=list)


class _Events:
    """The event stream of :meth:`SimulatedClient.events`: blocks until closed."""

    def __init__(self, owner: "SimulatedClient") -> None:
        self.owner = owner
        self.queue: queue.Queue = queue.Queue()

    def __iter__(self) -> "_Events":
        return self

    def __next__(self) -> dict:
        event = self.queue.get()
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        self.owner.streams.discard(self)
        self.queue.put(None)


class SimulatedClient:
    """The few :class:`gantry.engine.Engine` calls made outside the runtime (the daemon's
    event stream)."""

    def __init__(self) -> None:
        self.streams: set[_Events] = set()

    def events(self, filters: dict | None = None) -> _Events:
        stream = _Events(self)
        self.streams.add(stream)
        return stream

    def emit(self, action: str, info: ContainerInfo) -> None:
        log.info("%s %s", action, info.id[:12])
        attrs = {**info.labels.to_dict(), "name": info.name}
        event = {"status": action, "Action": action, "id": info.id, "timeNano": time.time_ns(),
                 "Actor": {"ID": info.id, "Attributes": attrs}}
        for stream in list(self.streams):
            stream.queue.put(event)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        for stream in list(self.streams):
            stream.close()


class SimulatedRuntime(Runtime):
    """:class:`gantry.runtime.Runtime` without Docker (see the module doc)."""

    def __init__(self, start: float = DEFAULTS["start"], ready: float = DEFAULTS["ready"],
                 stop: float = DEFAULTS["stop"], fail: str = "") -> None:
        super().__init__(SimulatedClient(), "loopback")  # type: ignore[arg-type]
        self.times = {"start": start, "ready": ready, "stop": stop}
        self.fail = fail
        self._lock = threading.Lock()
        self._containers: dict[str, _Container] = {}

    # -- images: always present --------------------------------------------------------------
    def resolve(self, repo: str, tag: str) -> str:
        return f"{repo}@sha256:{hashlib.sha256(f'{repo}:{tag}'.encode()).hexdigest()}"

    def has_image(self, ref: str) -> bool:
        return True

    def pull(self, ref: str, on_event: Callable[[dict], None] | None = None) -> None:
        self.pulled.add(ref)

    def tags(self, repo: str) -> list[str]:
        return []

    def image_id(self, ref: str) -> str | None:
        return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()

    def registry_has(self, ref: str) -> bool:
        return True

    def remove_image(self, ref: str) -> bool:
        return False

    # -- containers --------------------------------------------------------------------------
    def create(self, name: str, image: str, labels: dict[str, str], *,
               tcp_ports: Iterable[int] = (), **_: Any) -> str:
        cid = hashlib.sha256(f"{name}{time.time_ns()}".encode()).hexdigest()
        info = ContainerInfo(id=cid, name=name, labels=L.GantryLabels.from_dict(labels),
                             status="created", exit_code=None, health=None, created=_stamp(),
                             started_at="", image_id=self.image_id(image) or "",
                             ports={p: 0 for p in tcp_ports})  # a port once started
        with self._lock:
            self._containers[cid] = _Container(info)
        self.client.emit("create", info)
        return cid

    def start(self, container_id: str) -> None:
        c = self._get(container_id)
        time.sleep(self.times["start"])  # the engine's work: namespaces, network, process
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
        # Every container port is served by the one listener (the checks and routes only
        # need each port to answer).
        ports = {p: port for p in c.info.ports}
        with self._lock:
            c.sock = sock
            c.info = replace(c.info, status="running", started_at=_stamp(), ports=ports)
        thread = threading.Thread(target=self._serve, args=(c, sock), daemon=True,
                                  name=f"sim-{container_id[:12]}")
        c.threads.append(thread)
        thread.start()
        self.client.emit("start", c.info)

    def _serve(self, c: _Container, sock: socket.socket) -> None:
        """The app: listen after its start-to-ready time, answer every request."""
        time.sleep(self.times["ready"])  # bound but not listening: connections are refused
        try:
            sock.listen(64)
            while True:
                conn, _ = sock.accept()
                with conn:
                    conn.settimeout(2)
                    try:
                        conn.recv(4096)
                        conn.sendall(_ANSWER)
                    except OSError:
                        pass
        except OSError:  # closed by stop
            return

    def _get(self, container_id: str) -> _Container:
        with self._lock:
            for cid, c in self._containers.items():
                if cid.startswith(container_id) or c.info.name == container_id:
                    return c
        raise DockerFailed(f"no such container: {container_id[:12]}")

    def inspect(self, container_id: str) -> ContainerInfo | None:
        try:
            return self._get(container_id).info
        except Exception:
            return None

    def list(self, label_filters: list[str]) -> list[ContainerInfo]:
        wanted = [f.partition("=") for f in label_filters]
        with self._lock:
            infos = [c.info for c in self._containers.values()]
        out = []
        for info in infos:
            labels = info.labels.to_dict()
            if all(labels.get(k) == v for k, _, v in wanted):
                out.append(info)
        return sorted(out, key=lambda i: (i.created, i.id))

    def set_restart_policy(self, container_id: str, name: str) -> None:
        c = self._get(container_id)
        with self._lock:
            c.info = replace(c.info, restart_policy=name)

    def stop(self, container_id: str, timeout: float) -> None:
        try:
            c = self._get(container_id)
        except Exception:
            return  # gone is fine
        if not c.info.running:
            return
        if self.fail == "stop":
            raise DockerFailed(f"stopping container {container_id[:12]}: simulated failure")
        self.client.emit("kill", c.info)
        with self._lock:
            sock, c.sock = c.sock, None
        if sock is not None:
            _close(sock)
        self.client.emit("die", c.info)
        time.sleep(self.times["stop"])  # the engine's cleanup after the exit
        with self._lock:
            c.info = replace(c.info, status="exited", exit_code=0)
        self.client.emit("stop", c.info)

    def remove(self, container_id: str) -> None:
        try:
            c = self._get(container_id)
        except Exception:
            return  # gone is fine
        if self.fail == "remove":
            raise DockerFailed(f"removing container {container_id[:12]}: simulated failure")
        with self._lock:
            sock, c.sock = c.sock, None
            self._containers.pop(c.info.id, None)
        if sock is not None:
            _close(sock)
        self.client.emit("destroy", c.info)

    def exec(self, container_id: str, command: list[str], timeout: float) -> int | None:
        return 0

    def logs_tail(self, container_id: str, lines: int = 5) -> str:
        return ""


def _close(sock: socket.socket) -> None:
    """Close a listener so that a thread blocked in accept() returns."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
