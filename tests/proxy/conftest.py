"""Fixtures for the proxy tests: the real daemon as a subprocess, loopback backends."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from proxy.client import ProxyClient, ProxyNotRunning
from proxy.keeper import KeeperClient
from proxy.paths import keeper_socket_path
from proxy_servers import EchoServer, wait_for


@pytest.fixture(scope="session", autouse=True)
def _raise_fd_limit() -> None:
    # 500 concurrent connections through the proxy need ~1000 fds in the daemon (which
    # inherits the limit) and 1000 more in the test process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or (hard == resource.RLIM_INFINITY and soft < 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))


class ProxyProcess:
    """A `python -m proxy run` subprocess on a temp socket and state file."""

    def __init__(self, tmp: Path, *extra: str):
        self.tmp = tmp
        self.socket_path = str(tmp / "run" / "proxy.sock")
        self.state_path = str(tmp / "state" / "proxy-state.json")
        self.log_path = str(tmp / "proxy.log")
        self.extra = extra
        self.process: subprocess.Popen | None = None
        self.client = ProxyClient(self.socket_path)

    def start(self, timeout: float = 15.0, prefix: Sequence[str] = (),
              **popen: Any) -> ProxyProcess:
        """`prefix`: a wrapper command (which must exec the proxy); `popen`: Popen options."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "proxy", "run", "--socket", self.socket_path,
             "--state", self.state_path, *self.extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, **popen)
        log.close()

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                return self.client.ping()["pid"] == self.process.pid
            except ProxyNotRunning:
                return False

        wait_for(up, timeout, what="the proxy to answer")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return Path(self.log_path).read_text() if os.path.exists(self.log_path) else ""

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        assert self.process is not None
        return self.process.returncode

    @property
    def keeper(self) -> KeeperClient:
        """The listener keeper of this proxy (it outlives kill and stop)."""
        return KeeperClient(keeper_socket_path(self.socket_path))

    def close(self) -> None:
        """Kill the proxy and stop its keeper (which frees its ports)."""
        self.kill()
        self.keeper.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator:
    started: list[ProxyProcess] = []

    def make(*extra: str, tmp: Path | None = None, **start: Any) -> ProxyProcess:
        proc = ProxyProcess(tmp or tmp_path, *extra).start(**start)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.close()


@pytest.fixture
def proxy(make_proxy) -> ProxyProcess:
    return make_proxy()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def echo_pair() -> Iterator[tuple[EchoServer, EchoServer]]:
    a, b = EchoServer(greeting=b"A"), EchoServer(greeting=b"B")
    yield a, b
    a.close()
    b.close()
