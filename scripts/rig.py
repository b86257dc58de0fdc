#!/usr/bin/env python3
"""The real test rig shared by the tests, CI and the demo.

Starts (each only if not already answering) dockerd and a local image registry, starts etcd
members on free loopback ports, and builds the test images FROM scratch with busybox.

Command line: ``python3 scripts/rig.py [services] [images]``.
Only the standard library is used so it runs before the virtualenv exists.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rig_certs import Certs, make_certs

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


def exit_on_sigterm() -> None:
    """Let SIGTERM unwind the program like Ctrl-C does, so the daemons, etcd members and
    containers a long script started are torn down by its `finally` blocks (Python's default
    SIGTERM ends the process at once and leaves them running)."""
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _raise)


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

def registry_answers(addr: str = REGISTRY_ADDR, ca: str | None = None) -> bool:
    """Does a registry answer on ``addr`` (over TLS trusting ``ca`` when given; asking for
    credentials counts as answering)?"""
    scheme, context = ("https", ssl.create_default_context(cafile=ca)) if ca else ("http", None)
    try:
        with urllib.request.urlopen(f"{scheme}://{addr}/v2/", timeout=2,
                                    context=context) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (OSError, urllib.error.URLError):
        return False


def ensure_registry(addr: str = REGISTRY_ADDR, timeout: float = 30) -> None:
    """Start Debian's docker-registry on ``addr`` unless a registry already answers there."""
    if registry_answers(addr):
        return
    start_registry(addr, RIG_DIR / "registry", timeout=timeout)


def start_registry(addr: str, home: Path, notify: list[dict] | None = None,
                   timeout: float = 30, tls: Certs | None = None,
                   htpasswd: Path | None = None) -> subprocess.Popen:
    """Start Debian's docker-registry on ``addr`` with its storage, config and log under
    ``home``, sending its notifications to the ``notify`` endpoints (see
    notification_endpoint); answers the process once the registry answers. ``tls``: serve
    HTTPS only, with its server certificate; ``htpasswd``: require the users of that file
    (see write_htpasswd)."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    config = home / "config.yml"
    settings: dict = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(home / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": addr},
    }
    if notify:
        settings["notifications"] = {"endpoints": notify}
    if tls is not None:
        settings["http"]["tls"] = {"certificate": tls.cert("server"), "key": tls.key("server")}
    if htpasswd is not None:
        settings["auth"] = {"htpasswd": {"realm": "gantry-test", "path": str(htpasswd)}}
    config.write_text(json.dumps(settings))  # JSON is valid YAML: no YAML writer needed
    log.info("starting docker-registry on %s", addr)
    proc = _spawn(["docker-registry", "serve", str(config)], home / "registry.log")

    def up() -> bool:
        # Answering first: a concurrent rig (another test worker) may have won the port.
        if registry_answers(addr, tls.ca if tls else None):
            return True
        if proc.poll() is not None:
            raise RigError(f"docker-registry exited with {proc.returncode}; see "
                           f"{home / 'registry.log'}")
        return False
    wait_until(up, timeout, f"the registry on {addr}")
    return proc


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file (bcrypt, as docker-registry wants) of ``users`` (name -> password)."""
    lines = []
    for name, password in users.items():
        proc = subprocess.run(["htpasswd", "-niB", name], input=password, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RigError(f"htpasswd failed (apache2-utils installed?): {proc.stderr.strip()}")
        lines.append(proc.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class AuthRegistry:
    """A registry serving HTTPS only and asking for a user (htpasswd), on a free loopback
    port, with Docker config dirs for the docker CLI's ``--config`` or ``DOCKER_CONFIG``:
    ``login`` (after ``docker login``), ``wrong`` (a wrong password) and ``none`` (empty).

    Docker treats a registry on loopback as insecure: it speaks TLS to it without checking
    the certificate (elsewhere the CA goes to /etc/docker/certs.d/HOST:PORT/ca.crt).
    """

    name: str  # localhost:PORT, as image references name it
    home: Path
    user: str
    password: str
    proc: subprocess.Popen | None = None

    def config(self, kind: str) -> str:
        return str(self.home / f"docker-{kind}")

    def push_copy(self, source: str, repo: str, tag: str) -> str:
        """Push the local image ``source`` as ``NAME/repo:tag`` (logged in) and drop that
        local reference again, so using it means pulling with credentials; its reference."""
        ref = f"{self.name}/{repo}:{tag}"
        _run(["docker", "tag", source, ref])
        try:
            _run(["docker", "--config", self.config("login"), "push", "-q", ref])
        finally:
            _run(["docker", "rmi", ref])
        return ref

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def start_auth_registry(home: Path, user: str = "gantry",
                        password: str = "registry-secret") -> AuthRegistry:
    """Start an AuthRegistry under ``home`` (its certificates, data, Docker configs)."""
    certs = make_certs(home / "certs", clients=())
    port = free_port()
    registry = AuthRegistry(f"localhost:{port}", home, user, password)
    registry.proc = start_registry(f"127.0.0.1:{port}", home / "registry", tls=certs,
                                   htpasswd=write_htpasswd(home / "htpasswd", {user: password}))
    for kind in ("login", "wrong", "none"):
        Path(registry.config(kind)).mkdir(parents=True, exist_ok=True)
    _run(["docker", "--config", registry.config("login"), "login", "-u", user,
          "--password-stdin", registry.name], input=password)
    wrong = base64.b64encode(f"{user}:not-{password}".encode()).decode()
    (Path(registry.config("wrong")) / "config.json").write_text(
        json.dumps({"auths": {registry.name: {"auth": wrong}}}))
    return registry


def notification_endpoint(name: str, url: str, token: str | None = None,
                          backoff: str = "200ms") -> dict:
    """One entry of the registry's ``notifications.endpoints``: POST each batch of events to
    ``url`` (with ``Authorization: Bearer <token>``), retrying every ``backoff`` on failure."""
    return {"name": name, "url": url, "timeout": "5s", "threshold": 3, "backoff": backoff,
            "headers": {"Authorization": [f"Bearer {token}"]} if token else {}}


# --- etcd ----------------------------------------------------------------------------------

@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    scheme: str = "http"
    plain_port: int | None = None  # a second, plain-HTTP client listener of a TLS member

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def plain_endpoint(self) -> str | None:
        return f"127.0.0.1:{self.plain_port}" if self.plain_port else None

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """One or more etcd members on free loopback ports, each with its own data dir.

    With ``tls`` (see rig_certs.make_certs) the client listeners serve TLS with the server
    certificate; ``client_cert_auth`` then requires client certificates signed by the CA
    (whose CN etcd takes as the user), and ``plain_listener`` adds a plain-HTTP client
    listener per member (``plain_endpoints``). ``extra_args`` go to every member (e.g.
    ``--auth-token-ttl``). Peers talk plain HTTP.
    """

    size: int = 1
    base_dir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="etcd-", dir=_etcd_root())))
    members: list[EtcdMember] = field(default_factory=list)
    tls: Certs | None = None
    client_cert_auth: bool = False
    plain_listener: bool = False
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        token = f"gantry-{os.getpid()}-{id(self)}"
        self._token = token
        self.members = [EtcdMember(f"m{i}", free_port(), free_port(), self.base_dir / f"m{i}",
                                   scheme="https" if self.tls else "http",
                                   plain_port=free_port() if self.plain_listener else None)
                        for i in range(self.size)]

    @property
    def plain_endpoints(self) -> list[str]:
        return [m.plain_endpoint for m in self.members if m.plain_endpoint]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the CA, presenting the ``root`` client certificate."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.cert("root"), self.tls.key("root"))
        return context

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` on the first member as ``root`` (by its certificate); its output."""
        argv = ["etcdctl", "--endpoints", self.members[0].client_url]
        if self.tls is not None:
            argv += ["--cacert", self.tls.ca, "--cert", self.tls.cert("root"),
                     "--key", self.tls.key("root")]
        proc = subprocess.run([*argv, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RigError(f"etcdctl {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
        return proc.stdout

    def leader(self) -> int:
        """The index of the member leading the cluster now."""
        for entry in json.loads(self.etcdctl("endpoint", "status", "--cluster", "-w", "json")):
            status = entry["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return [m.client_url for m in self.members].index(entry["Endpoint"])
        raise RigError("no etcd member leads")

    def enable_auth(self, root_password: str, users: dict[str, tuple[str, str | None]]
                    ) -> None:
        """Add ``root`` and ``users`` (name -> (password, key prefix or None)), each with a
        role of its name granting readwrite on its prefix (none: no rights), then turn
        authentication on (later etcdctl calls act as ``root`` only through its client
        certificate, with ``client_cert_auth``)."""
        self.etcdctl("user", "add", "root", "--new-user-password", root_password)
        self.etcdctl("user", "grant-role", "root", "root")
        for name, (password, prefix) in users.items():
            self.etcdctl("user", "add", name, "--new-user-password", password)
            if prefix is not None:
                self.etcdctl("role", "add", name)
                self.etcdctl("role", "grant-permission", name, "--prefix=true", "readwrite",
                             prefix)
                self.etcdctl("user", "grant-role", name, name)
        self.etcdctl("auth", "enable")

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def live_endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members if m.proc and m.proc.poll() is None]

    def _argv(self, m: EtcdMember) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        listen = m.client_url + (f",http://{m.plain_endpoint}" if m.plain_port else "")
        argv = ["etcd", "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", listen, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self._token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
                *self.extra_args]
        if self.tls is not None:
            argv += ["--cert-file", self.tls.cert("server"), "--key-file", self.tls.key("server")]
            if self.client_cert_auth:
                argv += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        return argv

    def start(self, index: int | None = None, timeout: float = 30) -> "EtcdCluster":
        """Start every member (or one, after a kill) and wait until the cluster is healthy."""
        targets = self.members if index is None else [self.members[index]]
        for m in targets:
            m.proc = _spawn(self._argv(m), self.base_dir / f"{m.name}.log")
        for m in targets:
            wait_until(lambda m=m: _etcd_healthy(m, self.ssl_context()), timeout,
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


def _etcd_healthy(m: EtcdMember, context: ssl.SSLContext | None = None) -> bool:
    if m.proc is not None and m.proc.poll() is not None:
        raise RigError(f"etcd member {m.name} exited with {m.proc.returncode}; "
                       f"see {m.data_dir.parent / (m.name + '.log')}")
    try:
        with urllib.request.urlopen(f"{m.client_url}/health", timeout=2,
                                    context=context) as resp:
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


def write_context(c: Path, variant: str, version: str | None = None) -> Path:
    """Write the build context of a test image variant into the directory ``c`` (a Dockerfile
    FROM scratch with busybox); ``version``: the text of / instead of the variant's."""
    text, cmd = VARIANTS[variant]
    shutil.copy(BUSYBOX, c / "busybox")
    cgi = c / "www" / "cgi-bin"
    cgi.mkdir(parents=True, exist_ok=True)
    (c / "www" / "index.html").write_text((version or text) + "\n")
    (c / "www" / "health").write_text("ok\n")
    for name, script in (("slow", SLOW_CGI), ("break", BREAK_CGI), ("env", ENV_CGI)):
        (cgi / name).write_text(script)
        (cgi / name).chmod(0o755)
    (c / "entry.sh").write_text(APP_ENTRY)
    (c / "entry.sh").chmod(0o755)
    (c / "Dockerfile").write_text(DOCKERFILE.format(cmd=cmd))
    return c


def build_image(variant: str, repo: str = TEST_REPO, tag: str | None = None,
                push: bool = True) -> str:
    """Build one test image FROM scratch with busybox, push it, and answer its reference."""
    ref = f"{repo}:{tag or variant.replace('_', '-')}"
    with tempfile.TemporaryDirectory(prefix="gantry-image-") as ctx:
        write_context(Path(ctx), variant)
        _run(["docker", "build", "-q", "-t", ref, ctx])
    if push:
        _run(["docker", "push", "-q", ref])
    return ref


def build_test_images() -> dict[str, str]:
    """Build and push every test image variant; answer variant -> reference."""
    return {v: build_image(v) for v in VARIANTS}


def _run(argv: list[str], input: str | None = None) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          input=input)
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
