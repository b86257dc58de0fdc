#!/usr/bin/env python3
"""The real test rig shared by the tests, CI and the demo.

Starts (each only if not already answering) dockerd and a local image registry, starts etcd
members on free loopback ports, and builds the test images FROM scratch with busybox.

Command line: ``python3 scripts/rig.py [services] [images]``.
Only the standard library is used so it runs before the virtualenv exists.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rig")

RIG_DIR = Path(os.environ.get("GANTRY_RIG_DIR", os.path.join(tempfile.gettempdir(), "gantry-rig")))
REGISTRY_ADDR = os.environ.get("GANTRY_REGISTRY_ADDR", "127.0.0.1:5000")
REGISTRY = "localhost:" + REGISTRY_ADDR.rsplit(":", 1)[1]
TEST_REPO = f"{REGISTRY}/gantry-test/app"
BUSYBOX = "/bin/busybox"


class RigError(RuntimeError):
    """A service of the rig could not be started."""


class WaitTimeout(AssertionError):
    """A condition polled with a deadline never came true (an AssertionError, for tests)."""


def wait_for(predicate, timeout: float = 10, what: str = "condition", interval: float = 0.05):
    """Poll ``predicate`` until it answers something truthy and answer that value; raise
    WaitTimeout after ``timeout`` seconds. The one deadline-poll of the tests, rig and demo."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    """wait_for for the rig's services: a timeout is a RigError (the rig could not start)."""
    try:
        wait_for(predicate, timeout, what, interval)
    except WaitTimeout as e:
        raise RigError(str(e)) from None


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    """Start a long-lived process detached from our session, logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (loopback) that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- dockerd -------------------------------------------------------------------------------

def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def ensure_dockerd(timeout: float = 60) -> None:
    """Start dockerd in the background unless a Docker engine already answers."""
    if docker_answers():
        return
    if not shutil.which("dockerd"):
        raise RigError("dockerd is not installed (scripts/bootstrap installs docker.io)")
    log.info("starting dockerd (log: %s)", RIG_DIR / "dockerd.log")
    # As production hosts should run it: with live-restore, containers keep running while
    # the engine restarts; without the userland proxy, loopback-published ports are kernel
    # NAT rules that keep forwarding meanwhile (docker-proxy processes die with dockerd).
    proc = _spawn(["dockerd", "--live-restore", "--userland-proxy=false"], RIG_DIR / "dockerd.log")

    def up() -> bool:
        if proc.poll() is not None:
            raise RigError(f"dockerd exited with {proc.returncode}; see {RIG_DIR / 'dockerd.log'}")
        return docker_answers()
    wait_until(up, timeout, "dockerd to answer `docker info`", interval=0.5)


# --- registry ------------------------------------------------------------------------------

def registry_answers(addr: str = REGISTRY_ADDR) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def ensure_registry(addr: str = REGISTRY_ADDR, timeout: float = 30) -> None:
    """Start Debian's docker-registry on ``addr`` unless a registry already answers there."""
    if registry_answers(addr):
        return
    home = RIG_DIR / "registry"
    (home / "data").mkdir(parents=True, exist_ok=True)
    config = home / "config.yml"
    # JSON is valid YAML, so no YAML writer is needed here.
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(home / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": addr},
    }))
    log.info("starting docker-registry on %s", addr)
    _spawn(["docker-registry", "serve", str(config)], home / "registry.log")
    wait_until(lambda: registry_answers(addr), timeout, f"the registry on {addr}")


# --- etcd ----------------------------------------------------------------------------------

@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """One or more etcd members on free loopback ports, each with its own data dir."""

    size: int = 1
    base_dir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="etcd-", dir=_etcd_root())))
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        token = f"gantry-{os.getpid()}-{id(self)}"
        self._token = token
        self.members = [EtcdMember(f"m{i}", free_port(), free_port(), self.base_dir / f"m{i}")
                        for i in range(self.size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def live_endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members if m.proc and m.proc.poll() is None]

    def _argv(self, m: EtcdMember) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return ["etcd", "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self._token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"]

    def start(self, index: int | None = None, timeout: float = 30) -> "EtcdCluster":
        """Start every member (or one, after a kill) and wait until the cluster is healthy."""
        targets = self.members if index is None else [self.members[index]]
        for m in targets:
            m.proc = _spawn(self._argv(m), self.base_dir / f"{m.name}.log")
        for m in targets:
            wait_until(lambda m=m: _etcd_healthy(m), timeout,
                       f"etcd member {m.name} on {m.endpoint}")
        return self

    def kill(self, index: int) -> None:
        """kill -9 one member, as a crash would."""
        m = self.members[index]
        if m.proc and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()

    def stop(self) -> None:
        for m in self.members:
            if m.proc and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc:
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _etcd_root() -> Path:
    root = RIG_DIR / "etcd"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _etcd_healthy(m: EtcdMember) -> bool:
    if m.proc is not None and m.proc.poll() is not None:
        raise RigError(f"etcd member {m.name} exited with {m.proc.returncode}; "
                       f"see {m.data_dir.parent / (m.name + '.log')}")
    try:
        with urllib.request.urlopen(f"{m.client_url}/health", timeout=2) as resp:
            return json.load(resp).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


# --- test images ---------------------------------------------------------------------------

SLOW_CGI = """#!/bin/sh
# Holds the request s seconds (GET /cgi-bin/slow?s=N), then answers the version.
s=$(echo "$QUERY_STRING" | sed -n 's/.*s=\\([0-9.]*\\).*/\\1/p')
sleep "${s:-1}"
printf 'Content-Type: text/plain\\r\\n\\r\\n'
cat /www/index.html
"""

BREAK_CGI = """#!/bin/sh
# Makes /health answer 404 from now on (for monitor tests).
rm -f /www/health
printf 'Content-Type: text/plain\\r\\n\\r\\nbroken\\n'
"""

ENV_CGI = """#!/bin/sh
# Answers the container's environment (for config-change tests).
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env | sort
"""

# The app runs under a tiny shell so that SIGTERM ends it at once (PID 1 ignores signals
# that have no handler).
APP_ENTRY = """#!/bin/sh
trap 'kill $child 2>/dev/null; exit 0' TERM INT
# One line of output (for `gantry logs` tests): which version, where.
echo "app $(cat /www/index.html) listening on ${PORT:-8080}"
httpd -f -p "${PORT:-8080}" -h /www &
child=$!
wait $child
"""

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
COPY entry.sh /entry.sh
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=1s --timeout=1s --retries=2 \
    CMD wget -q -O /dev/null http://127.0.0.1:8080/health || exit 1
CMD {cmd}
"""

# variant -> (text of /, CMD)
VARIANTS: dict[str, tuple[str, str]] = {
    "v1": ("v1", '["/entry.sh"]'),
    "v2": ("v2", '["/entry.sh"]'),
    "v3": ("v3", '["/entry.sh"]'),
    # Starts but never listens: ready checks can never pass.
    "never_ready": ("never-ready", '["sleep", "3600"]'),
    # Exits at once with an error.
    "crash": ("crash", '["sh", "-c", "echo crashing >&2; exit 3"]'),
    # Ready at once, but /health answers 404 from $SICK_AFTER seconds (default 3) after the
    # start on: a version that fails its bake (rollout.minHealthy).
    "sickly": ("sickly",
               '["sh", "-c", "(sleep ${SICK_AFTER:-3}; rm -f /www/health) & exec /entry.sh"]'),
}


def image_ref(variant: str) -> str:
    return f"{TEST_REPO}:{variant.replace('_', '-')}"


def build_image(variant: str, repo: str = TEST_REPO, tag: str | None = None,
                push: bool = True) -> str:
    """Build one test image FROM scratch with busybox, push it, and answer its reference."""
    version, cmd = VARIANTS[variant]
    ref = f"{repo}:{tag or variant.replace('_', '-')}"
    with tempfile.TemporaryDirectory(prefix="gantry-image-") as ctx:
        c = Path(ctx)
        shutil.copy(BUSYBOX, c / "busybox")
        cgi = c / "www" / "cgi-bin"
        cgi.mkdir(parents=True)
        (c / "www" / "index.html").write_text(version + "\n")
        (c / "www" / "health").write_text("ok\n")
        for name, text in (("slow", SLOW_CGI), ("break", BREAK_CGI), ("env", ENV_CGI)):
            (cgi / name).write_text(text)
            (cgi / name).chmod(0o755)
        (c / "entry.sh").write_text(APP_ENTRY)
        (c / "entry.sh").chmod(0o755)
        (c / "Dockerfile").write_text(DOCKERFILE.format(cmd=cmd))
        _run(["docker", "build", "-q", "-t", ref, str(c)])
    if push:
        _run(["docker", "push", "-q", ref])
    return ref


def build_test_images() -> dict[str, str]:
    """Build and push every test image variant; answer variant -> reference."""
    return {v: build_image(v) for v in VARIANTS}


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="rig: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", help="services and/or images (default: both)")
    args = parser.parse_args(argv)
    args.what = args.what or ["services", "images"]
    if set(args.what) - {"services", "images"}:
        parser.error("expected services and/or images")
    try:
        if "services" in args.what:
            ensure_dockerd()
            ensure_registry()
        if "images" in args.what:
            for variant, ref in build_test_images().items():
                log.info("image %s: %s", variant, ref)
    except RigError as e:
        print(f"rig: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
