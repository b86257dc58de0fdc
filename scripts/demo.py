#!/usr/bin/env python3
"""The fleet demo: a zero-downtime, progressive rollout across three simulated hosts.

What it does, printing every real command it runs:

1. starts what is not running: dockerd, the local registry (scripts/rig.py), and an etcd
   of its own (data in the demo's state dir);
2. builds the demo image v1 and pushes it as ``localhost:5000/gantry-demo/PROJECT/web:stable``;
3. starts three simulated hosts: per host a ``gantry-proxy run`` (own control socket) and a
   ``gantryd run --machine hostN --proxy-bind 127.0.0.N+1``;
4. ``gantryd setconfig`` + ``gantryd update`` (the tag is pinned to v1's digest), waits;
5. starts steady HTTP load through the three proxies (short requests and multi-second ones);
6. builds v2 and pushes it as ``stable`` too (the tag moved; the fleet keeps v1's digest),
   then ``gantryd update --wait`` pins the new digest and rolls it out one host at a time,
   shown live by gantryd itself (a line per host change and a table redrawn in place on a
   terminal, a line per change otherwise; the summary at the end);
7. prints a summary (requests sent/failed, per-host version and time, rollout time) and
   cleans everything up -- also on Ctrl-C -- unless ``--keep`` is given (``--stop`` then tears
   the kept demo down). With ``--keep``, a ``gantryd serve`` started beside etcd also shows
   the fleet's web page, live during the rollouts; its URL is printed.

Exit status: 0 when every request succeeded and the rollout completed, 1 otherwise, 2 on usage
errors. It installs nothing: ``scripts/demo`` runs scripts/bootstrap first, then this.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import loadgen  # noqa: E402
import rig  # noqa: E402

log = logging.getLogger("demo")

HOSTS: tuple[tuple[str, str], ...] = (("host1", "127.0.0.2"), ("host2", "127.0.0.3"),
                                      ("host3", "127.0.0.4"))
COMPONENT = "web"
TAG = "stable"
PROJECT_LABEL = "io.gantry.project"
PREFERRED_PORT = 8080
SLOW_SECONDS = 3
LEASE_TTL = 5
SERVE_PORT = 8700  # `gantryd serve`'s default; a free port when it is taken


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why."""


# --- printing ---------------------------------------------------------------------------------

def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def tool(name: str, module: str) -> list[str]:
    """How to run one of gantry's console scripts: the virtualenv's own, else PATH, else
    ``python -m``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


def shown(argv: Sequence[str]) -> str:
    """A command as the user would type it (console scripts by their plain name)."""
    words = list(argv)
    if words and os.path.basename(words[0]) in ("gantryd", "gantry-proxy", "gantry"):
        words[0] = os.path.basename(words[0])
    return " ".join(words)


# --- state of one demo (saved so that `--stop` can tear a kept demo down) -------------------

@dataclass
class HostState:
    """One simulated host: its proxy and its gantryd daemon."""

    name: str
    bind: str
    dir: str
    proxy_pid: int | None = None
    daemon_pid: int | None = None

    @property
    def socket(self) -> str:
        return str(Path(self.dir) / "proxy.sock")

    @property
    def proxy_state(self) -> str:
        return str(Path(self.dir) / "proxy-state.json")


@dataclass
class DemoState:
    """Everything the demo started; written to ``<state dir>/demo.json`` as it goes."""

    project: str
    dir: str
    port: int = 0
    etcd: str = ""
    etcd_pid: int | None = None
    serve_pid: int | None = None  # `gantryd serve` (--keep): the web page
    page_url: str = ""
    hosts: list[HostState] = field(default_factory=list)

    @property
    def file(self) -> Path:
        return Path(self.dir) / "demo.json"

    def save(self) -> None:
        self.file.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> "DemoState | None":
        path = state_dir / "demo.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["hosts"] = [HostState(**h) for h in data.get("hosts", [])]
        return cls(**data)

    def targets(self) -> list[tuple[str, int]]:
        return [(h.bind, self.port) for h in self.hosts]


# --- commands ---------------------------------------------------------------------------------

class Commands:
    """Runs the real CLIs (printing each command first), with GANTRYD_ETCD set."""

    def __init__(self, state: DemoState):
        self.state = state
        self.gantryd = tool("gantryd", "gantryd")
        self.proxy = tool("gantry-proxy", "proxy")

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, GANTRYD_ETCD=self.state.etcd, PYTHONUNBUFFERED="1", **extra)
        env.pop("GANTRYD_PREFIX", None)
        return env

    def run(self, argv: list[str], quiet: bool = False, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command to completion; print it and (unless quiet) its output."""
        if not quiet:
            say(f"$ {shown(argv)}")
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(),
                              timeout=timeout, cwd=self.state.dir)
        log.debug("%s -> %d\n%s%s", shown(argv), proc.returncode, proc.stdout, proc.stderr)
        if not quiet:
            for line in (proc.stdout + proc.stderr).splitlines():
                say(f"  {line}")
        if check and proc.returncode != 0:
            output = "" if not quiet else f":\n{proc.stdout}{proc.stderr}"
            raise DemoError(f"`{shown(argv)}` exited with {proc.returncode}{output}")
        return proc

    def gantryd_cmd(self, *args: str) -> list[str]:
        return [*self.gantryd, *args]

    def desired(self) -> tuple[str, int]:
        """The pinned image and revision, from ``gantryd list PROJECT -c web --json``."""
        proc = self.run(self.gantryd_cmd("list", self.state.project, "-c", COMPONENT, "--json"),
                        quiet=True)
        try:
            desired = json.loads(proc.stdout)[COMPONENT]["desired"]
            return desired["image"], int(desired["revision"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DemoError(f"unexpected `gantryd list --json` output ({exc}): "
                            f"{proc.stdout[:300]!r}") from None


# --- processes --------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ours(pid: int | None, marker: str) -> bool:
    """Is ``pid`` still the process we started (its command line names ``marker``)?"""
    return pid is not None and _running(pid) and marker in _cmdline(pid)


def stop_process(pid: int | None, marker: str, what: str, timeout: float = 15) -> None:
    """SIGTERM a process we started (checked by ``marker``), SIGKILL it after ``timeout``."""
    if not ours(pid, marker):
        return
    assert pid is not None
    say(f"$ kill {pid}    # {what}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _running(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            say(f"  {what} did not stop within {timeout:.0f}s; kill -9 {pid}")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status (no-op for processes of an earlier demo run)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a long-lived process in its own session (a Ctrl-C of the demo does not reach it:
    the demo's cleanup stops it in order)."""
    say(f"$ {shown(argv)} &")
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text)


# --- setting up -------------------------------------------------------------------------------

def port_free(port: int, hosts: Sequence[tuple[str, str]] = HOSTS) -> bool:
    """Is ``port`` free on every simulated host's address?"""
    for _, bind in hosts:
        with socket.socket() as s:
            try:
                s.bind((bind, port))
            except OSError:
                return False
    return True


def choose_port(wanted: int, hosts: Sequence[tuple[str, str]] = HOSTS) -> int:
    """``wanted`` (0: 8080) when free on all the hosts' addresses, else any port free on all."""
    if wanted:
        if not port_free(wanted, hosts):
            raise DemoError(f"port {wanted} is in use on one of {', '.join(b for _, b in hosts)}")
        return wanted
    if port_free(PREFERRED_PORT, hosts):
        return PREFERRED_PORT
    for _ in range(50):
        port = rig.free_port()
        if port_free(port, hosts):
            return port
    raise DemoError("found no port free on all the host addresses")


def start_docker() -> None:
    """dockerd and the registry, shared with the test rig: started unless they answer."""
    for what, answers, ensure, log_file in (
            ("dockerd", rig.docker_answers, rig.ensure_dockerd, rig.RIG_DIR / "dockerd.log"),
            (f"registry on {rig.REGISTRY_ADDR}", rig.registry_answers, rig.ensure_registry,
             rig.RIG_DIR / "registry" / "registry.log")):
        if answers():
            say(f"{what}: running")
        else:
            say(f"{what}: starting (log: {log_file})")
            ensure()
    for binary, package in (("etcd", "etcd-server"), ("etcdctl", "etcd-client")):
        if not shutil.which(binary):
            raise DemoError(f"{binary} is missing: scripts/demo installs {package}")


def start_etcd(state: DemoState) -> None:
    """An etcd of this demo alone, on free loopback ports, its data in the state dir."""
    etcd_dir = Path(state.dir) / "etcd"
    cluster = rig.EtcdCluster(size=1, base_dir=etcd_dir)
    member = cluster.members[0]
    say(f"$ etcd --name {member.name} --data-dir {member.data_dir} "
        f"--listen-client-urls {member.client_url} ... &")
    cluster.start()
    state.etcd, state.etcd_pid = member.endpoint, member.proc.pid if member.proc else None
    state.save()
    say(f"etcd: {state.etcd} (data in {etcd_dir})")
    say(f"$ export GANTRYD_ETCD={state.etcd}")


def demo_repo(project: str) -> str:
    """The demo's image repository in the local registry (one per project: tags move)."""
    return f"{rig.REGISTRY}/gantry-demo/{project}/{COMPONENT}"


def build_and_push(variant: str, repo: str, versions: "Versions") -> str:
    """Build the demo image ``variant`` (its / answers the variant), push it as :stable, and
    answer the digest reference the registry now has for the tag."""
    ref = f"{repo}:{TAG}"
    say(f"$ docker build -t {ref} <FROM scratch + busybox httpd; / answers {variant!r}>")
    say(f"$ docker push {ref}")
    rig.build_image(variant, repo=repo, tag=TAG, push=True)
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", ref],
                          capture_output=True, text=True)
    digests = [d for d in json.loads(proc.stdout or "[]") if d.startswith(repo + "@")]
    if proc.returncode != 0 or not digests:
        raise DemoError(f"no registry digest for {ref} after the push: {proc.stderr.strip()}")
    versions.by_image[digests[0]] = variant
    say(f"{ref} is now {digests[0].split('@')[1]}")
    return digests[0]


def write_config(state: DemoState, repo: str) -> Path:
    """The project's .gantry file: one http component behind the proxy, checked on /health."""
    config = {"components": [{
        "name": COMPONENT, "repo": repo, "tag": TAG,
        "ports": [{"external": state.port, "container": 8080, "kind": "http"}],
        "readyChecks": [{"kind": "http", "port": 8080, "path": "/health", "timeout": 1,
                         "interval": 0.2}],
        "readyTimeout": 20, "drainTimeout": SLOW_SECONDS + 10, "stopTimeout": 2,
        "rollout": {"maxParallel": 1},
    }]}
    path = Path(state.dir) / ".gantry"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def start_serve(state: DemoState, cmd: Commands, procs: dict[str, subprocess.Popen]) -> None:
    """`gantryd serve` on loopback (read-only: no token), for the project's web page."""
    port = SERVE_PORT if port_free(SERVE_PORT, (("serve", "127.0.0.1"),)) else rig.free_port()
    log_path = Path(state.dir) / "gantryd-serve.log"
    proc = spawn(cmd.gantryd_cmd("serve", "--listen", f"127.0.0.1:{port}"), log_path, cmd.env())
    procs["serve"] = proc
    state.serve_pid, state.page_url = proc.pid, f"http://127.0.0.1:{port}/projects/{state.project}"
    state.save()

    def listening() -> bool:
        if proc.poll() is not None:
            raise DemoError(f"gantryd serve exited with {proc.returncode}:\n{log_tail(log_path)}")
        return "listening on" in log_path.read_text(errors="replace")
    rig.wait_until(listening, 20, "gantryd serve to listen", interval=0.05)
    say(f"web page: {state.page_url} (live: open it now to watch the rollouts)")


def wait_socket(path: str, proc: subprocess.Popen, log_path: Path, timeout: float = 15) -> None:
    """Wait until a freshly started gantry-proxy answers on its control socket."""
    def answers() -> bool:
        if proc.poll() is not None:
            raise DemoError(f"gantry-proxy exited with {proc.returncode}:\n{log_tail(log_path)}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                return False
    rig.wait_until(answers, timeout, f"gantry-proxy on {path}", interval=0.05)


def start_hosts(state: DemoState, cmd: Commands, procs: dict[str, subprocess.Popen],
                hosts: Sequence[tuple[str, str]] = HOSTS, lease_ttl: int = LEASE_TTL,
                daemon_env: dict[str, str] | None = None, batch: int = 0) -> None:
    """Per simulated host (name, bind address): a gantry-proxy of its own, then `gantryd run`
    using it (`daemon_env`: added to its environment; `batch`: start that many daemons at a
    time, each batch once the previous one reported). scripts/bench/fleet starts its larger
    fleets through this too."""
    for name, bind in hosts:
        d = Path(state.dir) / name
        (d / "locks").mkdir(parents=True, exist_ok=True)
        state.hosts.append(HostState(name, bind, str(d)))
    for h in state.hosts:
        argv = [*cmd.proxy, "run", "--socket", h.socket, "--state", h.proxy_state,
                "--log-file", str(Path(h.dir) / "gantry-proxy.log")]
        proc = spawn(argv, Path(h.dir) / "gantry-proxy.out", cmd.env())
        procs[f"{h.name}-proxy"] = proc
        h.proxy_pid = proc.pid
        state.save()
    for h in state.hosts:
        wait_socket(h.socket, procs[f"{h.name}-proxy"], Path(h.dir) / "gantry-proxy.log")
    def all_reported(names: set[str]) -> bool:  # `gantryd list --json`: a status key each
        proc = cmd.run(cmd.gantryd_cmd("list", state.project, "-c", COMPONENT, "--json"),
                       quiet=True, check=False)
        try:
            reported = {m["machine"] for m in json.loads(proc.stdout)[COMPONENT]["machines"]}
        except (ValueError, KeyError, TypeError):
            return False
        return reported >= names
    for i, h in enumerate(state.hosts):
        if batch and i and i % batch == 0:  # imports of many daemons at once starve the rest
            started = {x.name for x in state.hosts[:i]}
            wait_for(lambda started=started: all_reported(started), max(30, 3 * batch),
                     f"hosts 1-{i} to report to etcd", state)
        argv = cmd.gantryd_cmd("run", state.project, "-c", COMPONENT, "--machine", h.name,
                               "--proxy-socket", h.socket, "--proxy-state", h.proxy_state,
                               "--proxy-bind", h.bind, "--lease-ttl", str(lease_ttl))
        # One machine plays several hosts: each needs its own local lock dir (no flag for it).
        proc = spawn(argv, Path(h.dir) / "gantryd.log",
                     cmd.env(GANTRY_LOCK_DIR=str(Path(h.dir) / "locks"), **(daemon_env or {})))
        procs[f"{h.name}-daemon"] = proc
        h.daemon_pid = proc.pid
        state.save()
    what = "the three hosts" if len(state.hosts) == 3 else f"the {len(state.hosts)} hosts"
    # Many daemons starting at once on a small machine take a while to import and connect.
    wait_for(lambda: all_reported({h.name for h in state.hosts}), max(30, 3 * len(state.hosts)),
             f"{what} to report to etcd", state)
    say(f"{what} report to etcd")


def check_daemons(state: DemoState) -> None:
    """Fail fast (with its log) when a daemon died."""
    for h in state.hosts:
        if h.daemon_pid is not None and not ours(h.daemon_pid, "gantryd"):
            raise DemoError(f"gantryd of {h.name} exited:\n{log_tail(Path(h.dir) / 'gantryd.log')}")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, state: DemoState) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        check_daemons(state)
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# --- following a rollout ---------------------------------------------------------------------

@dataclass
class Rollout:
    """One `gantryd update --wait` (the live view is gantryd's own)."""

    ok: bool
    seconds: float
    image: str = ""
    message: str = ""


class Versions:
    """Image digest -> the demo version it was built as (the registry's digest of each push)."""

    def __init__(self) -> None:
        self.by_image: dict[str, str] = {}


def load_line(load: loadgen.Load | None) -> str:
    if load is None:
        return ""
    answers = ", ".join(f"{v} {n}" for v, n in sorted(load.versions().items()))
    return f"load: {load.sent} sent, {load.failed} failed ({answers or 'no answers yet'})"


def follow_rollout(cmd: Commands, state: DemoState, versions: Versions, name: str,
                   tty: bool, timeout: float = 90) -> Rollout:
    """`gantryd update --wait`: pin the tag (the image it pins is demo version `name`) and
    show the rollout live exactly as a user sees it (on a terminal: a line per host change and
    a table redrawn in place; else a line per change), then its summary."""
    argv = cmd.gantryd_cmd("update", state.project, "-c", COMPONENT, "--wait", "--timeout",
                           str(timeout))
    say(f"$ {shown(argv)}")
    started = time.monotonic()
    # On a terminal gantryd draws on it; otherwise (or --no-tty) its plain lines come through.
    proc = subprocess.Popen(argv, env=cmd.env(), cwd=state.dir, text=True,
                            stdout=None if tty else subprocess.PIPE,
                            stderr=None if tty else subprocess.STDOUT)
    try:
        for line in proc.stdout if proc.stdout is not None else ():
            say(f"  {line.rstrip()}")
        code = proc.wait(timeout + 30)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    seconds = time.monotonic() - started
    check_daemons(state)
    target, _ = cmd.desired()
    if versions.by_image.setdefault(target, name) != name:
        raise DemoError(f"gantryd update pinned {target}, not {name}'s digest")
    return Rollout(code == 0, seconds, target,
                   "" if code == 0 else f"gantryd update --wait exited with {code}")


# --- the demo ---------------------------------------------------------------------------------

def run_demo(args: argparse.Namespace, state: DemoState, procs: dict[str, subprocess.Popen]) -> int:
    t0 = time.monotonic()
    repo = demo_repo(args.project)
    start_etcd(state)
    cmd = Commands(state)
    if args.keep:
        start_serve(state, cmd, procs)
    versions = Versions()

    step(f"image v1, pushed as {repo}:{TAG}")
    build_and_push("v1", repo, versions)

    step("three simulated hosts (a proxy and a gantryd daemon each)")
    return fleet_demo(args, state, cmd, versions, repo, procs, t0)


def fleet_demo(args: argparse.Namespace, state: DemoState, cmd: Commands,
               versions: Versions, repo: str, procs: dict[str, subprocess.Popen],
               t0: float) -> int:
    """From the three hosts' start to the summary."""
    tty = sys.stdout.isatty() and not args.no_tty
    start_hosts(state, cmd, procs)

    step("deploy v1 to the fleet (the tag is pinned to a digest)")
    config = write_config(state, repo)
    say(f"config: {config}")
    cmd.run(cmd.gantryd_cmd("setconfig", state.project, str(config)))
    first = follow_rollout(cmd, state, versions, "v1", tty)
    if not first.ok:
        raise DemoError(f"the first deploy did not complete: {first.message}")
    cmd.run(cmd.gantryd_cmd("list", state.project))

    step(f"steady load through the three proxies (port {state.port})")
    load = loadgen.Load(state.targets(), short_workers=args.short_workers, slow_workers=1,
                        slow_seconds=SLOW_SECONDS, timeout=30, pause=0.02)
    load.start()
    say(f"{args.short_workers} short (GET /) and 1 slow (GET /cgi-bin/slow?s={SLOW_SECONDS}) "
        f"client(s) per host, a new connection per request")
    try:
        load.wait_for(lambda ld: ld.sent >= 20, 10)
        say(load_line(load))

        step(f"image v2, pushed as {repo}:{TAG} too: the tag moved")
        build_and_push("v2", repo, versions)
        say(f"the fleet still runs {first.image.split('@')[1]} (v1): hosts run the digest "
            "pinned by `gantryd update`, not the tag")

        step("roll out v2, one host at a time, under load")
        rollout = follow_rollout(cmd, state, versions, "v2", tty)
        say(load_line(load))
    finally:
        say("stopping the load (requests in flight complete first)")
        load.stop()
    served = {h.name: loadgen.request((h.bind, state.port), "/", 10) for h in state.hosts}
    return summary(state, load, rollout, served, time.monotonic() - t0)


def summary(state: DemoState, load: loadgen.Load, rollout: Rollout,
            served: dict[str, tuple[bool, str]], total: float) -> int:
    """Print the summary; answer the exit status."""
    step("summary")
    stats = list(load.stats.values())
    slow = sum(s.slow_sent for s in stats)
    answers = ", ".join(f"{v}: {n}" for v, n in sorted(load.versions().items()))
    say(f"requests sent:   {load.sent} ({load.sent - slow} short, {slow} slow of {SLOW_SECONDS}s)")
    say(f"requests failed: {load.failed}")
    say(f"answers:         {answers}")
    for error in load.errors()[:10]:
        say(f"  error: {error}")
    for h in state.hosts:  # per-host rollout times: gantryd's summary, above
        ok, answer = served[h.name]
        serves = answer if ok else f"ERROR {answer}"
        digest = rollout.image.split("@")[-1][:19]
        say(f"{h.name} {h.bind}:{state.port}  serves {serves:<4}  ({digest})")
    done = "complete" if rollout.ok else f"NOT complete ({rollout.message})"
    say(f"rollout:         {done} in {rollout.seconds:.1f}s (gantryd update -> every host ready)")
    say(f"demo took:       {total:.0f}s")
    all_v2 = all(ok and answer == "v2" for ok, answer in served.values())
    return 0 if rollout.ok and load.failed == 0 and all_v2 else 1


# --- keep / stop ------------------------------------------------------------------------------

def print_kept(state: DemoState, cmd: Commands, stop_hint: str) -> None:
    step("kept running (--keep)")
    gantryd = shown(cmd.gantryd)
    if not shutil.which("gantryd"):
        say("(first: . .venv/bin/activate)")
    say("look at it:")
    say(f"  {gantryd} --etcd {state.etcd} list {state.project}")
    for h in state.hosts:
        say(f"  {shown(cmd.proxy)} status --socket {h.socket}")
    say(f"  curl http://{state.hosts[0].bind}:{state.port}/" if state.hosts else "")
    if state.page_url:
        say(f"  web page: {state.page_url}")
    say(f"  logs: {state.dir}/host*/gantryd.log")
    say("stop it:")
    say(f"  {stop_hint}")


def teardown(state: DemoState) -> None:
    """Stop everything the demo started, in order; safe to run twice and after a crash."""
    step("cleaning up")
    cmd = Commands(state)
    daemons_up = any(ours(h.daemon_pid, "gantryd") for h in state.hosts)
    if state.etcd and ours(state.etcd_pid, "etcd") and daemons_up:
        try:
            proc = cmd.run(cmd.gantryd_cmd("kill", state.project, "-c", COMPONENT),
                           check=False, timeout=30)
            if proc.returncode == 0:
                cmd.run(cmd.gantryd_cmd("wait", state.project, "-c", COMPONENT, "--timeout",
                                        "20"), check=False, timeout=60)
        except subprocess.TimeoutExpired as exc:  # a saturated machine: stop them all anyway
            say(f"  {exc}")
    for h in state.hosts:
        stop_process(h.daemon_pid, "gantryd", f"gantryd run of {h.name}")
    remove_containers(state.project)
    for h in state.hosts:
        stop_process(h.proxy_pid, "proxy", f"gantry-proxy of {h.name}")
        # Its listener keeper holds the host's ports until stopped.
        cmd.run([*cmd.proxy, "keeper", "stop", "--socket", h.socket], check=False, timeout=30)
    stop_process(state.serve_pid, " serve ", "gantryd serve")
    stop_process(state.etcd_pid, "etcd", "etcd")
    untag_images(demo_repo(state.project))
    shutil.rmtree(state.dir, ignore_errors=True)
    say(f"removed {state.dir}")


def remove_containers(project: str) -> None:
    """Remove whatever container is still labelled with the demo's project."""
    label = f"{PROJECT_LABEL}={project}"
    say(f"$ docker ps -aq --filter label={label}")
    proc = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                          capture_output=True, text=True)
    ids = proc.stdout.split()
    if ids:
        say(f"$ docker rm -f {' '.join(ids)}")
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    else:
        say("  (none left)")


def untag_images(repo: str) -> None:
    """Drop the demo's local image names (tags and digests); the layers stay cached, and
    images that other names share (the rig's test images, say) are untouched."""
    names = subprocess.run(
        ["docker", "image", "ls", "--digests", "--filter", f"reference={repo}",
         "--format", "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}"],
        capture_output=True, text=True).stdout.split()
    names = [n for n in dict.fromkeys(names) if not n.endswith((":<none>", "@<none>"))]
    if names:
        say(f"$ docker rmi {' '.join(n.split('@')[0] for n in names if '@' not in n)} ...")
        subprocess.run(["docker", "rmi", *names], capture_output=True)


def leftover_containers(project: str) -> list[str]:
    proc = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}"],
                          capture_output=True, text=True)
    return proc.stdout.split()


# --- command line -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="demo", description="A zero-downtime rollout across three simulated hosts.",
        epilog="scripts/demo runs scripts/bootstrap (installs what is missing), then this.")
    p.add_argument("--project", default="demo", help="gantry project name (default: demo)")
    p.add_argument("--state-dir", default=None,
                   help="where the demo keeps etcd's data, sockets and logs "
                        "(default: <tmp>/gantry-demo/PROJECT)")
    p.add_argument("--port", type=int, default=0,
                   help=f"the component's port on every host (default {PREFERRED_PORT}, "
                        "or a free one if taken)")
    p.add_argument("--short-workers", type=int, default=2,
                   help="short-request clients per host (default 2)")
    p.add_argument("--keep", action="store_true",
                   help="leave the fleet running at the end, and show its web page (gantryd "
                        "serve; the URL is printed); `--stop` tears it down")
    p.add_argument("--stop", action="store_true", help="tear down a demo kept with --keep")
    p.add_argument("--no-tty", action="store_true",
                   help="a line per host state change even on a terminal")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", args.project):
        p.error("--project: lower-case letters, digits, '_', '.', '-'")
    args.state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(args.project)
    return args


def stop_command(args: argparse.Namespace) -> str:
    """The command line that tears this demo down."""
    words = ["scripts/demo", "--stop"]
    if args.project != "demo":
        words += ["--project", args.project]
    if args.state_dir != default_state_dir(args.project):
        words += ["--state-dir", str(args.state_dir)]
    return " ".join(words)


def default_state_dir(project: str) -> Path:
    return Path(tempfile.gettempdir()) / "gantry-demo" / project


def stop_kept(args: argparse.Namespace) -> int:
    state = DemoState.load(args.state_dir)
    if state is None:
        say(f"no kept demo in {args.state_dir}; removing containers of project {args.project}")
        remove_containers(args.project)
        return 0
    teardown(state)
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="demo: %(message)s")
    if args.stop:
        return stop_kept(args)
    if DemoState.load(args.state_dir) is not None:
        say(f"a demo of project {args.project} is already there ({args.state_dir}): "
            f"stop it with `{stop_command(args)}`, or use another --project")
        return 2
    step("services")
    try:
        start_docker()
    except (DemoError, rig.RigError) as exc:
        say(f"demo failed: {exc}")
        return 1
    if leftover_containers(args.project):
        say(f"containers labelled {PROJECT_LABEL}={args.project} exist already: remove them with "
            f"`{stop_command(args)}`, or use another --project")
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    state = DemoState(args.project, str(args.state_dir))
    procs: dict[str, subprocess.Popen] = {}
    # Ctrl-C and SIGTERM clean up (even when started with SIGINT ignored, as background jobs are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    status = 1
    try:
        state.port = choose_port(args.port)
        state.save()
        status = run_demo(args, state, procs)
    except KeyboardInterrupt:
        say("\ninterrupted")
        status = 130
    except (DemoError, rig.RigError, subprocess.TimeoutExpired) as exc:
        say(f"\ndemo failed: {exc}")
        for h in state.hosts:
            tail = log_tail(Path(h.dir) / "gantryd.log", 8)
            if tail:
                say(f"  {h.name} gantryd.log:\n{tail}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.keep:
            print_kept(state, Commands(state), stop_command(args))
        else:
            teardown(state)
    return status


if __name__ == "__main__":
    sys.exit(main())
