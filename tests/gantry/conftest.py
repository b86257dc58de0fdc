"""Fixtures for the gantry lifecycle tests: a real gantry-proxy per session (temp socket and
lock dir), a Lifecycle factory on the test's project, and a CLI runner.

The session rig (tests/conftest.py) provides dockerd, the registry, the test images and a
unique project name per test (whose containers it removes afterwards).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from gantry.lifecycle import Host, Lifecycle
from gantry.progress import Reporter
from gantry_helpers import (MACHINE, Cli, RecordingReporter, forget_local_images, pid_alive,
                            wait_for)
from proxy.client import ProxyClient, ensure_running
from proxy.keeper import KeeperClient
from proxy.paths import keeper_socket_path


@pytest.fixture(scope="session")
def gantry_env(tmp_path_factory) -> dict[str, str]:
    """Environment pointing gantry at a session proxy socket, state file and lock dir."""
    base = tmp_path_factory.mktemp("gantry")
    return {
        "GANTRY_PROXY_SOCKET": str(base / "run" / "proxy.sock"),
        "GANTRY_PROXY_STATE": str(base / "state" / "proxy-state.json"),
        "GANTRY_LOCK_DIR": str(base / "locks"),
    }


@pytest.fixture(scope="session")
def proxy(gantry_env) -> ProxyClient:
    """The real gantry-proxy daemon, started detached as gantry does it; stopped at the end."""
    client = ensure_running(gantry_env["GANTRY_PROXY_SOCKET"], gantry_env["GANTRY_PROXY_STATE"])
    pid = client.ping()["pid"]
    yield client
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), 15, "the proxy to exit")
    KeeperClient(keeper_socket_path(client.socket_path)).stop()  # it keeps ports otherwise


@pytest.fixture
def make_lifecycle(engine, proxy, project, gantry_env, test_images,
                   routes_cleanup) -> Callable[..., Lifecycle]:
    """Lifecycle factory for this test's project (proxy bound on 127.0.0.1)."""

    def make(reporter: Reporter | None = None, **host_kwargs: Any) -> Lifecycle:
        host = Host(engine, proxy, project, MACHINE, proxy_bind="127.0.0.1",
                    origin="gantry", reporter=reporter or RecordingReporter(),
                    lock_dir=Path(gantry_env["GANTRY_LOCK_DIR"]), **host_kwargs)
        return Lifecycle(host)

    return make


@pytest.fixture
def private_repo(docker_client, registry, project):
    """A repo of this test alone (so removing its local images disturbs no other test)."""
    repo = f"{registry}/gantry-test/pull-{project}"
    yield repo
    forget_local_images(docker_client, repo)


@pytest.fixture
def life(make_lifecycle) -> Lifecycle:
    return make_lifecycle()


@pytest.fixture
def routes_cleanup(proxy, project):
    """Remove the test project's proxy routes afterwards (the rig removes the containers)."""
    yield
    for route in proxy.routes():
        if route["name"].startswith(project + "."):
            proxy.remove_route(route["name"])


@pytest.fixture
def cli(tmp_path, project, gantry_env, proxy, test_images, routes_cleanup) -> Cli:
    workdir = tmp_path / "app"
    workdir.mkdir()
    return Cli(workdir, project, gantry_env)
