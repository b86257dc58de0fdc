"""The simulated fleet of the gantryd tests and the scorecard: a Fleet of hosts (`gantryd run`
subprocesses, each with its own machine name, proxy socket, lock dir and proxy bind address
127.0.0.2/.3/.4) plus the gantryd CLI, against the real etcd, dockerd and registry.

A plain module (not a conftest) so that scripts/scorecard can use it outside pytest:
``with open_fleet(endpoints, project) as fleet: ...``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "gantry"))

import loadgen  # noqa: E402  (scripts/)
import rig  # noqa: E402
from rig import wait_for  # noqa: E402,F401  (re-exported to the fleet tests)
from gantry_helpers import forget_local_images  # noqa: E402  (tests/gantry/)
from gantryd.etcd import Credentials, Etcd  # noqa: E402
from gantryd.store import Store  # noqa: E402
from proxy.keeper import KeeperClient  # noqa: E402
from proxy.paths import keeper_socket_path  # noqa: E402

HOSTS = {"h1": "127.0.0.2", "h2": "127.0.0.3", "h3": "127.0.0.4"}
LEASE_TTL = 3


def component(test_images: dict[str, str], variant: str = "v1", port: int = 8080,
              **extra: Any) -> dict[str, Any]:
    """A `web` component of the test app, routed on `port`, with short test timeouts."""
    repo, tag = test_images[variant].rsplit(":", 1)
    return {"name": "web", "repo": repo, "tag": tag,
            "ports": [{"external": port, "container": 8080, "kind": "http"}],
            "readyChecks": [{"kind": "http", "port": 8080, "path": "/health", "timeout": 1,
                             "interval": 0.2}],
            "readyTimeout": 4, "drainTimeout": 5, "stopTimeout": 1, **extra}


class Fleet:
    """Simulated hosts of one project plus the gantryd CLI, all against real services.

    A secured etcd: ``options`` (e.g. ``--ca-cert``, ``--user``) go to every gantryd command
    line, ``env`` into its environment, and ``credentials`` serve the fleet's own client."""

    def __init__(self, endpoints: list[str], project: str, base: Path,
                 options: Sequence[str] = (), env: dict[str, str] | None = None,
                 credentials: Credentials | None = None):
        self.endpoints = endpoints
        self.project = project
        self.base = base
        self.port = rig.free_port()  # the component's external port on every host
        self.procs: dict[str, subprocess.Popen] = {}
        self.options = list(options)
        self.env = env or {}
        self.etcd = Etcd(endpoints, credentials)
        self.store = Store(self.etcd, project)

    # -- environment -----------------------------------------------------------------------
    def host_dir(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(exist_ok=True)
        return path

    def host_env(self, name: str) -> dict[str, str]:
        d = self.host_dir(name)
        env = dict(os.environ)
        env.update(GANTRY_PROXY_SOCKET=str(d / "proxy.sock"),
                   GANTRY_PROXY_STATE=str(d / "proxy-state.json"),
                   GANTRY_LOCK_DIR=str(d / "locks"), PYTHONUNBUFFERED="1")
        env.pop("GANTRYD_ETCD", None)
        env.update(self.env)
        return env

    def write_config(self, *components: dict[str, Any]) -> Path:
        path = self.base / f"config-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"components": list(components)}))
        return path

    # -- CLI -------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, endpoints: list[str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(endpoints or self.endpoints),
                *self.options, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env=self.host_env("cli"))
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}"
                                 f"\n{proc.stderr}\n{self.logs()}")
        return proc

    def setconfig(self, *components: dict[str, Any]) -> None:
        self.cli("setconfig", self.project, str(self.write_config(*components)))

    def update(self, *components: str) -> None:
        self.cli("update", self.project, "-c", *(components or ("web",)))

    def wait(self, *components: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.cli("wait", self.project, "-c", *(components or ("web",)), "--timeout",
                        str(timeout), check=False, timeout=timeout + 30)

    def wait_done(self, *components: str, timeout: float = 60) -> None:
        proc = self.wait(*components, timeout=timeout)
        assert proc.returncode == 0, f"wait: {proc.returncode}\n{proc.stderr}\n{self.logs()}"

    # -- hosts -----------------------------------------------------------------------------
    def start(self, name: str, *components: str, endpoints: list[str] | None = None,
              options: Sequence[str] | None = None) -> None:
        """Start host `name` (`options`: its connection options instead of the fleet's)."""
        self.spawn(name, *components, endpoints=endpoints, options=options)
        self.wait_reported(name, *components)

    def spawn(self, name: str, *components: str, endpoints: list[str] | None = None,
              options: Sequence[str] | None = None) -> None:
        """Start host `name`'s `gantryd run` without waiting for it (see `wait_reported`)."""
        d = self.host_dir(name)
        log = open(d / "gantryd.log", "ab")
        argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(endpoints or self.endpoints),
                *(self.options if options is None else options),
                "run", self.project, "-c", *(components or ("web",)), "--machine", name,
                "--proxy-socket", str(d / "proxy.sock"), "--proxy-state",
                str(d / "proxy-state.json"), "--proxy-bind", HOSTS[name],
                "--lease-ttl", str(LEASE_TTL)]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=ROOT, env=self.host_env(name))
        log.close()

    def wait_reported(self, name: str, *components: str) -> None:
        """Wait until host `name` has written its status for every one of `components`."""
        wait_for(lambda: self._reported(name, components or ("web",)), 30,
                 f"{name} to report\n{self.logs()}")

    def _reported(self, name: str, components) -> bool:
        if self.procs[name].poll() is not None:
            raise AssertionError(f"{name} exited {self.procs[name].returncode}\n{self.logs()}")
        return all(self.store.machine(c, name) is not None for c in components)

    def start_all(self, *components: str, hosts: Sequence[str] = tuple(HOSTS)) -> None:
        """Start `hosts` together (their start-ups overlap) and wait until each reported."""
        for name in hosts:
            self.spawn(name, *components)
        for name in hosts:
            self.wait_reported(name, *components)

    def terminate(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def status(self, name: str, comp: str = "web"):
        return self.store.machine(comp, name)

    def address(self, name: str) -> tuple[str, int]:
        return (HOSTS[name], self.port)

    def answers(self, host: str, path: str = "/") -> str:
        """The body of one GET through `host`'s proxy, or `error: ...`."""
        ok, body = loadgen.request(self.address(host), path, timeout=5)
        return body if ok else f"error: {body}"

    def proxy(self, host: str):
        """A client of `host`'s proxy (the one its daemon started)."""
        from proxy.client import ProxyClient
        return ProxyClient(str(self.host_dir(host) / "proxy.sock"), timeout=5)

    def route(self, host: str, comp: str = "web") -> dict:
        """`host`'s proxy route of the component (its one port)."""
        return self.proxy(host).route(f"{self.project}.{comp}.{self.port}")

    def acquired(self, revision: int) -> list[str]:
        """Hosts that took a rollout slot for `revision`, in etcd order."""
        return [e.machine for e in self.store.events("web")
                if e.kind == "acquired" and e.revision == revision]

    def deploy_v1(self, test_images, hosts=tuple(HOSTS), **extra: Any) -> None:
        """Store a v1 config, update, start `hosts` and wait until they all serve v1."""
        self.setconfig(component(test_images, "v1", self.port, **extra))
        self.update()
        self.start_all(hosts=hosts)
        self.wait_done()
        assert {self.answers(h) for h in hosts} == {"v1"}

    def logs(self) -> str:
        out = []
        for d in sorted(self.base.iterdir()):
            log = d / "gantryd.log" if d.is_dir() else None
            if log and log.exists():
                lines = log.read_text(errors="replace").splitlines()[-40:]
                out.append(f"--- {d.name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pids = [pid for name in HOSTS if (pid := self._proxy_pid(self.base / name))]
        for pid in pids:  # all at once: each takes a moment to shut down
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            try:
                wait_for(lambda pid=pid: not process_alive(pid), 10, "the proxy to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        for name in HOSTS:  # the listener keepers the proxies started (they hold the ports)
            KeeperClient(keeper_socket_path(str(self.base / name / "proxy.sock"))).stop()
        self.etcd.close()

    @staticmethod
    def _proxy_pid(host_dir: Path) -> int | None:
        """The pid of the proxy a daemon started, as its control API reports it."""
        from proxy.client import ProxyClient, ProxyError
        socket_path = host_dir / "proxy.sock"
        if not socket_path.exists():
            return None
        try:
            return ProxyClient(str(socket_path), timeout=2).ping()["pid"]
        except (ProxyError, OSError, KeyError):
            return None


def containers(docker_client, project: str, machine: str) -> list[str]:
    """Ids of the running containers of `project` on simulated host `machine`, sorted."""
    from gantry import labels as L
    return sorted(c.id for c in docker_client.containers.list(
        ignore_removed=True, filters={"label": L.selector(project, machine)}))


@contextlib.contextmanager
def private_copy(docker_client, variant: str, project: str,
                 registry: str = rig.REGISTRY) -> Iterator[tuple[str, str]]:
    """The test image `variant` pushed to a repository of `project` alone (on `registry`,
    `localhost:PORT`), with no local reference: every host must pull it. Answers (repo, tag);
    forgotten locally at the end."""
    repo = f"{registry}/gantry-test/pull-{project}"
    docker_client.images.get(rig.image_ref(variant)).tag(repo, variant)
    docker_client.images.push(repo, tag=variant)
    forget_local_images(docker_client, repo)
    try:
        yield repo, variant
    finally:
        forget_local_images(docker_client, repo)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie child of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is as good as gone
        return not os.waitpid(pid, os.WNOHANG)[0]
    except ChildProcessError:
        return True


@contextlib.contextmanager
def open_fleet(endpoints: list[str], project: str, on_exit: Callable[[Fleet], None] | None = None,
               **secured: Any) -> Iterator[Fleet]:
    """A Fleet in a temp dir of its own; its daemons and proxies are stopped at the end
    (containers are left to the caller). ``on_exit`` sees the fleet before it closes;
    ``secured``: Fleet's options, env and credentials."""
    # Short paths: unix socket paths are limited to ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="gd-"))
    f = Fleet(endpoints, project, base, **secured)
    try:
        yield f
        if on_exit is not None:
            on_exit(f)
    finally:
        f.close()
        shutil.rmtree(base, ignore_errors=True)
