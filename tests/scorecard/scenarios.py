"""The fault scorecard's scenarios: one function per fault, each run on a fresh 3-host fleet
(tests/gantryd/fleet_helpers.py) serving v1 under steady load (scripts/loadgen.py) through
all three proxies, answering one Row: scenario, requests, failed, outcome, leaked, seconds.

The tests (tests/scorecard/test_scenarios.py) and ``scripts/scorecard`` both call
:func:`run_scenario`; nothing here is written twice.

A scenario body drives the fault and checks what the fleet did; it returns the outcome it
observed (its expectation when every check passed) or raises :class:`Miss` naming what was
seen instead. "Leaked" counts, once the fleet settled, the project's containers beyond one
running container per host, plus any stopped one.
"""
from __future__ import annotations

import http.client
import json
import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "scripts", ROOT / "tests" / "gantryd"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import loadgen  # noqa: E402  (scripts/)
import rig  # noqa: E402
from fleet_helpers import HOSTS, Fleet, process_alive, component, open_fleet, wait_for  # noqa: E402

PROJECT_LABEL = "io.gantry.project"
MACHINE_LABEL = "io.gantry.machine"

# Short timeouts keep every row brief; load requests (2 s at most) fit the drain timeout.
BASE_CONFIG: dict[str, Any] = {"readyTimeout": 4, "drainTimeout": 10, "stopTimeout": 1}
SLOW_SECONDS = 1
SETTLE_TIMEOUT = 30  # how long the fleet may take to remove what it retires, before "leaked"


class Miss(Exception):
    """The fleet did not do what the scenario expects; the message says what it did."""


@dataclass
class Row:
    scenario: str
    expected: str
    requests: int = 0
    failed: int = 0
    outcome: str = ""
    leaked: int = 0
    seconds: float = 0.0
    # Failed requests that the fault itself necessarily causes (connections carried by a
    # process killed with -9, an engine that stops its containers); see the scenario's note.
    excused: int = 0
    note: str = ""
    detail: str = ""  # errors and daemon logs, when the row misses

    @property
    def ok(self) -> bool:
        return (self.outcome == self.expected and self.leaked == 0
                and self.failed - self.excused == 0)

    def cells(self) -> list[Any]:
        failed = str(self.failed) + (f" ({self.excused} excused)" if self.excused else "")
        return [self.scenario, self.requests, failed, self.outcome, self.leaked,
                f"{self.seconds:.0f}", "ok" if self.ok else "MISS"]

    def report(self) -> str:
        return (f"{self.scenario}: outcome {self.outcome!r} (expected {self.expected!r}), "
                f"{self.failed} of {self.requests} requests failed ({self.excused} excused), "
                f"{self.leaked} leaked\n{self.note}\n{self.detail}")


HEADERS = ["scenario", "requests", "failed", "outcome", "leaked", "seconds", "verdict"]


class Held:
    """One long request through a host's proxy, in a thread of its own."""

    def __init__(self, target: tuple[str, int], seconds: float):
        self.result: tuple[bool, str] | None = None
        self._thread = threading.Thread(target=self._run, args=(target, seconds), daemon=True)
        self._thread.start()

    def _run(self, target, seconds) -> None:
        self.result = loadgen.request(target, f"/cgi-bin/slow?s={seconds}", timeout=seconds + 30)

    def join(self, timeout: float = 60) -> tuple[bool, str]:
        self._thread.join(timeout)
        return self.result or (False, "still running")


@dataclass
class Run:
    """What a scenario body works with."""

    fleet: Fleet
    images: dict[str, str]
    load: loadgen.Load
    config: dict[str, Any]
    cluster: rig.EtcdCluster | None = None
    held: list[Held] = field(default_factory=list)
    excused: int = 0
    note: str = ""

    def component(self, variant: str, **extra: Any) -> dict[str, Any]:
        return component(self.images, variant, self.fleet.port, **{**self.config, **extra})

    def roll(self, variant: str, **extra: Any) -> None:
        """setconfig + update to `variant` (does not wait)."""
        self.fleet.setconfig(self.component(variant, **extra))
        self.fleet.update()

    def hold(self, host: str, seconds: float) -> Held:
        h = Held(self.fleet.address(host), seconds)
        self.held.append(h)
        return h

    def serving(self) -> dict[str, str]:
        return {h: self.fleet.answers(h) for h in HOSTS}

    def expect_serving(self, version: str, timeout: float = 30) -> None:
        try:
            wait_for(lambda: set(self.serving().values()) == {version}, timeout)
        except AssertionError:
            raise Miss(f"hosts serve {self.serving()}, not {version} everywhere") from None

    def wait_done(self, timeout: float = 90) -> None:
        out = self.fleet.wait(timeout=timeout)
        if out.returncode != 0:
            raise Miss(f"rollout did not complete: wait exited {out.returncode}: "
                       f"{(out.stderr or out.stdout).strip()[:200]}")

    def revision(self) -> int:
        desired = self.fleet.store.desired("web")
        return desired.revision if desired else 0


# --- scenarios --------------------------------------------------------------------------------

def _expect_halt(run: Run) -> str:
    """The update just issued must halt on the first host; v1 keeps serving everywhere."""
    f = run.fleet
    out = f.wait(timeout=60)
    desired = f.store.desired("web")
    if out.returncode != 1 or not desired.is_halted:
        raise Miss(f"no halt: wait exited {out.returncode}, desired {desired}")
    failed = desired.halted.machine
    if f"rollout failed on {failed}" not in out.stderr:
        raise Miss(f"wait does not name the failed host: {out.stderr.strip()[:200]}")
    # The failed host alone took a slot (none at all when its pull failed: pulls come first).
    if not set(f.acquired(desired.revision)) <= {failed}:
        raise Miss(f"hosts that tried the bad revision: {f.acquired(desired.revision)}")

    def statuses():
        return {m.machine: m.status for m in f.store.machines("web")}
    try:
        wait_for(lambda: statuses() == {h: "failed" if h == failed else "halted" for h in HOSTS},
                 30)
    except AssertionError:
        raise Miss(f"statuses after the halt: {statuses()}") from None
    run.expect_serving("v1")
    if "halted" not in f.cli("list", f.project).stdout:
        raise Miss("`gantryd list` does not show the halt")
    return "halted as expected"


def never_ready(run: Run) -> str:
    """The new version never passes its ready checks; then the next update resumes."""
    run.roll("never_ready")
    outcome = _expect_halt(run)
    run.roll("v2")
    run.wait_done()
    run.expect_serving("v2")
    return outcome


def crash(run: Run) -> str:
    """The new version exits right after it starts."""
    run.roll("crash")
    return _expect_halt(run)


def missing_tag(run: Run) -> str:
    """The new tag does not exist: `gantryd update` cannot pin it and changes nothing."""
    f = run.fleet
    repo = run.images["v1"].rsplit(":", 1)[0]
    f.setconfig({**run.component("v1"), "repo": repo, "tag": f"no-such-tag-{uuid.uuid4().hex[:6]}"})
    out = f.cli("update", f.project, "-c", "web", check=False)
    if out.returncode == 0:
        raise Miss(f"update accepted a missing tag: {out.stdout.strip()}")
    if run.revision() != 1 or f.acquired(2):
        raise Miss(f"the fleet moved: revision {run.revision()}")
    run.expect_serving("v1")
    return "update refused; v1 kept"


class FlakyRegistry:
    """A registry front on a free loopback port: passes requests to the rig's registry until
    a pull asks for a manifest by digest, then goes down (that connection is cut and nothing
    listens any more). `gantryd update` pins the tag through it (the engine asks for the tag,
    then for the manifest by digest); the hosts' pulls (by digest alone) fail."""

    def __init__(self, upstream: str = rig.REGISTRY_ADDR):
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                if "/manifests/" in self.path and "/manifests/sha256:" not in self.path:
                    front.resolving += 1  # a tag lookup: its digest lookup follows
                elif "/manifests/sha256:" in self.path and front.resolving:
                    front.resolving -= 1
                elif "/manifests/sha256:" in self.path:
                    front.down()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                host, port = upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.putrequest(self.command, self.path, skip_accept_encoding=True)
                for k, v in self.headers.items():  # repeated ones (Accept) too
                    if k.lower() != "host":
                        conn.putheader(k, v)
                conn.endheaders()
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.pulls_refused = threading.Event()
        self.resolving = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if not self.pulls_refused.is_set():
            self.pulls_refused.set()
            threading.Thread(target=self.close, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def registry_down(run: Run) -> str:
    """The registry goes down when the first host pulls the new (pinned) image."""
    registry = FlakyRegistry()
    try:
        repo, tag = run.images["v2"].rsplit(":", 1)
        # The same repository through the flaky front: the local engine has no image under
        # that name, so every host must pull it.
        repo = f"localhost:{registry.port}/" + repo.split("/", 1)[1]
        run.fleet.setconfig({**run.component("v2"), "repo": repo, "tag": tag})
        run.fleet.update()
        outcome = _expect_halt(run)
        if not registry.pulls_refused.is_set():
            raise Miss("no host pulled from the registry")
        desired = run.fleet.store.desired("web")
        if "pull failed" not in (desired.halted.error or ""):
            raise Miss(f"halted for another reason: {desired.halted.error}")
        return outcome
    finally:
        registry.close()


def slow_client(run: Run) -> str:
    """A client holds a 20 s request through every host while the fleet switches to v2."""
    held = [run.hold(h, 20) for h in HOSTS]
    run.roll("v2", drainTimeout=30)
    run.wait_done(timeout=120)
    run.expect_serving("v2")
    results = [h.join() for h in held]
    if results != [(True, "v1")] * len(held):
        raise Miss(f"held requests answered {results}")
    return "rolled out; held requests done on v1"


def back_to_back(run: Run) -> str:
    """Three updates in a row, without waiting: v2, v3, v2 again. The fleet ends on the last."""
    for variant in ("v2", "v3", "v2"):
        run.roll(variant)
    run.wait_done(timeout=120)
    run.expect_serving("v2")
    desired = run.fleet.store.desired("web")
    if desired.revision != 4:
        raise Miss(f"desired revision {desired.revision}, expected 4")
    return "converged on the last (v2)"


def _history(f: Fleet) -> dict[int, dict[str, Any]]:
    """`gantryd history --json` of the component: revision -> row."""
    rows = json.loads(f.cli("history", f.project, "--json").stdout)["components"]["web"]
    return {r["revision"]: r for r in rows}


def _expect_rows(f: Fleet, expected: dict[int, tuple[str, str, str]]) -> dict[int, dict]:
    """History rows with these (cause, actor, outcome prefix), once the last one is done."""
    def matches() -> bool:
        rows = _history(f)
        return all(r in rows and (rows[r]["cause"], rows[r]["actor"]) == want[:2]
                   and rows[r]["outcome"].startswith(want[2]) for r, want in expected.items())
    try:
        wait_for(matches, 10)
    except AssertionError:
        raise Miss(f"history rows {_history(f)}") from None
    return _history(f)


def rollback(run: Run) -> str:
    """v2 rolled out, then `gantryd rollback` (to the last stable: v1), then `--to` v2's
    revision again: each a new revision through the slots, one host at a time."""
    from gantryd import history, rollout
    f = run.fleet
    run.roll("v2")
    run.wait_done()
    out = f.cli("rollback", f.project, "-c", "web")
    if "rollback to revision 1" not in out.stdout:
        raise Miss(f"rollback answered {out.stdout.strip()}")
    run.wait_done()
    run.expect_serving("v1")
    v1 = f.store.desired("web").image
    retained = {h: f.status(h).retained for h in HOSTS}
    if not all(v1 in kept for kept in retained.values()):
        raise Miss(f"hosts do not report v1 retained: {retained}")
    f.cli("rollback", f.project, "-c", "web", "--to", "2")
    run.wait_done()
    run.expect_serving("v2")
    events = f.store.events("web")
    if any(rollout.max_overlap(events, r) != 1 or sorted(f.acquired(r)) != sorted(HOSTS)
           for r in (3, 4)):
        raise Miss("a rollback did not go through the slots one host at a time")
    me = history.actor()
    rows = _expect_rows(f, {1: ("update", me, "rolled out in"), 2: ("update", me, "rolled out"),
                            3: ("rollback to r1", me, "rolled out"),
                            4: ("rollback to r2", me, "rolled out")})
    tags = {r: rows[r]["image"].split("@")[0].rsplit(":", 1)[1] for r in rows}
    if tags != {1: "v1", 2: "v2", 3: "v1", 4: "v2"} or set(rows[4]["hosts"]) != set(HOSTS):
        raise Miss(f"history rows {rows}")
    return "rolled back, then --to r2"


# Ready for the first container that asks (the first host), for no other one: a version that
# fails on the second host of a rollout.
FIRST_ONLY_CGI = """#!/bin/sh
me=$(hostname)
mkdir /claim/lock 2>/dev/null && echo "$me" > /claim/owner
if [ "$(cat /claim/owner 2>/dev/null)" = "$me" ]; then
  printf 'Content-Type: text/plain\r\n\r\nready\n'
else
  printf 'Status: 503 Not the first\r\nContent-Type: text/plain\r\n\r\nnot me\n'
fi
"""


def auto_revert(run: Run) -> str:
    """With rollout.onFailure "rollback", v2 is ready on the first host and never on the
    second: the fleet goes back to v1 by itself (the first host too), `wait` says so."""
    from gantryd import history, rollout
    f = run.fleet
    script, claim = f.base / "first-only", f.base / "claim"
    script.write_text(FIRST_ONLY_CGI)
    script.chmod(0o755)
    claim.mkdir()
    check = {"kind": "http", "port": 8080, "path": "/cgi-bin/first", "timeout": 1,
             "interval": 0.2}
    run.roll("v2", readyChecks=[check], rollout={"onFailure": "rollback"},
             bindings=[{"host": str(script), "container": "/www/cgi-bin/first",
                        "readOnly": True}, {"host": str(claim), "container": "/claim"}])
    out = f.wait(timeout=90)
    revert = f.store.desired("web")
    if out.returncode != 1 or revert.cause != "auto-revert" or revert.reverted is None:
        raise Miss(f"wait exited {out.returncode} ({out.stderr.strip()[:200]}); "
                   f"desired {revert}")
    failed, moved = revert.reverted.machine, f.acquired(2)[:1]
    if f.acquired(2) != moved + [failed] or (revert.revision, revert.source) != (3, 1):
        raise Miss(f"revision 2 taken by {f.acquired(2)}, failed on {failed}; {revert}")
    if f"rollout failed on {failed}" not in out.stderr or "was reverted" not in out.stderr:
        raise Miss(f"wait said: {out.stderr.strip()[:300]}")
    try:
        wait_for(lambda: sorted(m.machine for m in f.store.machines("web")
                                if rollout.host_done(revert, m)) == sorted(HOSTS), 60)
    except AssertionError:
        raise Miss(f"hosts after the revert: {f.store.machines('web')}") from None
    run.expect_serving("v1")
    if f.acquired(3) != moved:
        raise Miss(f"hosts that took a slot for the revert: {f.acquired(3)}, moved: {moved}")
    rows = _expect_rows(f, {2: ("update", history.actor(), f"halted on {failed}: "),
                            3: ("auto-revert to r1", f"gantryd@{failed}", "rolled out")})
    if "reverted by r3" not in rows[2]["outcome"]:
        raise Miss(f"r2 outcome: {rows[2]['outcome']}")
    return "reverted to v1"


def failed_bake(run: Run) -> str:
    """A version that passes its ready checks, serves, then turns unhealthy 3 s after its
    start, during its bake (rollout.minHealthy 20 s): its host switches straight back to the
    v1 container it kept (drained, not routed) and the rollout halts."""
    f = run.fleet
    before = {h: f.route(h)["backend"] for h in HOSTS}
    run.roll("sickly", rollout={"minHealthy": 20})
    outcome = _expect_halt(run)
    halted = f.store.desired("web").halted
    if "bake" not in halted.error:
        raise Miss(f"halted for another reason: {halted.error}")
    after = {h: f.route(h)["backend"] for h in HOSTS}
    if after != before:
        raise Miss(f"routes not back on the v1 containers: {before} -> {after}")
    if not run.load.versions()["sickly"]:
        raise Miss("the new version never served (no bake under traffic)")
    return "switched back; " + outcome


def health_remediation(run: Run) -> str:
    """Every host's container turns unhealthy at once (/health answers 404 from then on):
    each host replaces its own, holding the rollout slot (maxParallel 1), one at a time."""
    from gantryd import rollout
    f = run.fleet
    before = {h: f.route(h)["backend"] for h in HOSTS}
    for h in HOSTS:
        if f.answers(h, "/cgi-bin/break") != "broken":
            raise Miss(f"could not break {h}'s health")

    def replaced() -> bool:
        return all(f.route(h)["backend"] != before[h] and f.status(h).status == "ready"
                   and f.answers(h, "/health") == "ok" for h in HOSTS)
    try:
        wait_for(replaced, 90)
    except AssertionError:
        raise Miss(f"not every host replaced its container: "
                   f"{ {h: f.status(h).status for h in HOSTS} }") from None
    events = f.store.events("web")
    fixed = [e.machine for e in events
             if e.kind == "acquired" and (e.detail or "").startswith("remediation: ")]
    if sorted(fixed) != sorted(HOSTS):
        raise Miss(f"remediation events for {fixed}")
    if rollout.max_overlap(events) != 1:
        raise Miss("two hosts restarted at once")
    run.expect_serving("v1")
    return "remediated one host at a time"


def kill9_gantryd(run: Run) -> str:
    """kill -9 of the gantryd holding the rollout slot, mid-drain; it comes back later."""
    f = run.fleet
    drain = {"drainTimeout": 30}
    # A long request per host keeps each old container draining once its host switched.
    held = [run.hold(h, 10) for h in HOSTS]
    run.roll("v2", **drain)

    def switched_holder() -> str | None:
        for _, host, _ in f.store.holders("web"):
            if f.answers(host) == "v2":
                return host
        return None
    victim = wait_for(switched_holder, 30, "a slot holder to switch to v2")
    if f.status(victim).status != "updating":
        raise Miss(f"{victim} was no longer updating when killed: {f.status(victim)}")
    f.kill9(victim)
    wait_for(lambda: all(h != victim for _, h, _ in f.store.holders("web")), 30,
             f"{victim}'s slot to expire")
    run.wait_done()  # the others (the killed host has no status: its lease expired)
    others = [h for h in HOSTS if h != victim]
    if {f.answers(h) for h in others} != {"v2"}:
        raise Miss(f"other hosts serve {run.serving()}")
    before = f.acquired(2)
    f.start(victim)  # recovers: finishes the drain, keeps the v2 container
    run.wait_done()
    run.expect_serving("v2")
    if f.acquired(2) != before:
        raise Miss(f"{victim} redeployed after its restart: {f.acquired(2)}")
    results = [h.join() for h in held]
    if results != [(True, "v1")] * len(held):
        raise Miss(f"held requests answered {results}")
    return "rolled out; killed host recovered"


def kill9_proxy(run: Run) -> str:
    """kill -9 of the proxy of the host that holds the rollout slot. Its listening sockets
    live on in its listener keeper, so connections opened while it is down wait in the
    backlog until gantryd has restarted it: none may be refused. Only the connections the
    killed process carried may fail (excused: at most those in flight at the kill)."""
    f = run.fleet
    run.roll("v2")
    victim = wait_for(lambda: next((h for _, h, _ in f.store.holders("web")), None), 30,
                      "a slot holder")
    client, pid, in_flight = kill_proxy(f, run.load, victim)
    try:
        wait_for(lambda: _restarted(client, pid), 30, "the proxy to be restarted")
    except AssertionError:
        raise Miss(f"{victim}'s proxy was not restarted") from None
    # Routes restored: the host serves again (v1 or v2, depending on where the kill landed).
    wait_for(lambda: f.answers(victim) in ("v1", "v2"), 30, "the restarted proxy to serve")
    run.wait_done()
    run.expect_serving("v2")
    _excuse_proxy_kill(run, victim, in_flight)
    return "rolled out; proxy restarted"


def corrupt_proxy_state(run: Run) -> str:
    """A host's proxy state file turns to garbage and its proxy is killed -9 (so the restart
    reads it). The proxy keeps the file aside and starts with no routes; its listeners stay
    held, so clients wait in the backlog until gantryd restores the route from the
    container's labels. Only the connections the killed process carried may fail."""
    f = run.fleet
    victim = "h2"
    env = f.host_env(victim)
    Path(env["GANTRY_PROXY_STATE"]).write_text("{not json")
    killed = time.monotonic()
    client, pid, in_flight = kill_proxy(f, run.load, victim)
    try:
        wait_for(lambda: _restarted(client, pid, with_routes=True), 30,
                 "the proxy to be restarted with its route")
    except AssertionError:
        raise Miss(f"{victim}'s proxy did not come back with its route") from None
    back = time.monotonic() - killed
    aside = list(Path(env["GANTRY_PROXY_STATE"]).parent.glob("*.corrupt-*"))
    if not aside:
        raise Miss("the corrupt state file was not kept aside")
    run.roll("v2")
    run.wait_done()
    run.expect_serving("v2")
    _excuse_proxy_kill(run, victim, in_flight)
    run.note += f"; route restored {back:.1f} s after the kill"
    return "state set aside; route restored; rolled out"


def kill_proxy(f: Fleet, load: loadgen.Load, host: str) -> tuple[Any, int, int]:
    """kill -9 of `host`'s proxy under `load`: its control client, the pid killed, and the
    requests through it in flight at the kill (an upper bound: those may fail, no other)."""
    from proxy.client import ProxyClient
    client = ProxyClient(f.host_env(host)["GANTRY_PROXY_SOCKET"], timeout=2)
    pid = client.ping()["pid"]
    target = f.address(host)
    ended = load.ended(target)
    os.kill(pid, signal.SIGKILL)
    return client, pid, load.in_flight_since(target, ended)


def _restarted(client: Any, pid: int, with_routes: bool = False) -> bool:
    """Does another proxy than `pid` answer (with routes, if asked)?"""
    from proxy.client import ProxyError
    try:
        return client.ping()["pid"] != pid and (not with_routes or bool(client.routes()))
    except (ProxyError, OSError):
        return False


def _excuse_proxy_kill(run: Run, victim: str, in_flight: int) -> None:
    """Only the requests in flight through `victim`'s killed proxy may have failed, and no
    connection may have been refused; those failures are excused (Miss otherwise)."""
    failed, refused = run.load.stats[run.fleet.address(victim)].failed, run.load.refused
    if refused:
        raise Miss(f"{refused} connections refused")
    if failed > in_flight:
        raise Miss(f"{failed} requests failed through {victim}, more than the {in_flight} "
                   "in flight at its proxy's kill -9")
    run.excused = failed
    run.note = (f"{failed} requests failed through {victim}'s proxy, of {in_flight} in flight "
                "at its kill -9; 0 refused")


def proxy_upgrade(run: Run) -> str:
    """`gantry-proxy upgrade` of every host's proxy under load, with a long request held
    through each; then a rollout through the new proxies. Nothing may fail."""
    f = run.fleet
    held = [run.hold(h, 5) for h in HOSTS]
    wait_for(lambda: all(_live(f, h) for h in HOSTS), 10, "the held requests to be live")
    upgraded = []
    for host in HOSTS:
        env = f.host_env(host)
        out = subprocess.run([sys.executable, "-m", "proxy", "upgrade", "--socket",
                              env["GANTRY_PROXY_SOCKET"]], capture_output=True, text=True,
                             timeout=90, env=env, cwd=ROOT)
        if out.returncode != 0:
            raise Miss(f"upgrade of {host}'s proxy failed: {out.stderr.strip()[:200]}")
        upgraded.append(f"{host} {out.stdout.strip().rsplit(': ', 1)[-1]}")
    run.roll("v2")
    run.wait_done()
    run.expect_serving("v2")
    results = [h.join() for h in held]
    if results != [(True, "v1")] * len(held):
        raise Miss(f"held requests answered {results}")
    if run.load.refused:
        raise Miss(f"{run.load.refused} connections refused")
    run.note = "upgraded " + ", ".join(upgraded)
    return "upgraded; rolled out"


def _live(f: Fleet, host: str) -> int:
    """Live connections through `host`'s proxy."""
    from proxy.client import ProxyClient
    routes = ProxyClient(f.host_env(host)["GANTRY_PROXY_SOCKET"], timeout=5).routes()
    return sum(b["live"] for r in routes for b in r["backends"])


def etcd_member_down(run: Run) -> str:
    """One member of the 3-member etcd cluster is killed mid-rollout."""
    run.roll("v2")
    wait_for(lambda: run.fleet.acquired(2), 30, "the rollout to start")
    run.cluster.kill(0)  # the first endpoint: every client starts on it
    run.wait_done()
    run.expect_serving("v2")
    from gantryd import rollout
    if rollout.max_overlap(run.fleet.store.events("web"), revision=2) != 1:
        raise Miss("two hosts held the slot at once")
    return "rolled out"


ETCD_OUTAGE = 20


def etcd_outage(run: Run) -> str:
    """etcd (all 3 members) is down for 20 s in the middle of a rollout."""
    f, cluster = run.fleet, run.cluster
    run.roll("v2")
    wait_for(lambda: f.acquired(2), 30, "the rollout to start")
    for i in range(len(cluster.members)):
        cluster.kill(i)
    down = time.monotonic()

    def logged(host: str, text: str) -> int:
        return (f.base / host / "gantryd.log").read_text().count(text)
    wait_for(lambda: all(logged(h, "etcd unreachable") for h in HOSTS), ETCD_OUTAGE,
             "the daemons to notice")
    # Containers and proxies serve on while etcd is gone (the load checks every request).
    run.load.wait_for(lambda load: time.monotonic() - down >= ETCD_OUTAGE, ETCD_OUTAGE + 5)
    if any(f.procs[h].poll() is not None for h in HOSTS):
        raise Miss("a daemon exited during the outage")
    cluster.start()
    wait_for(lambda: all(logged(h, "back to normal") for h in HOSTS), 60, "the daemons to resume")
    run.wait_done()
    run.expect_serving("v2")
    if any(logged(h, "etcd unreachable") != 1 for h in HOSTS):
        raise Miss("the outage was logged more than once per daemon")
    return "rolled out"


def dockerd_restart(run: Run) -> str:
    """dockerd is restarted (SIGTERM, then started again) between two rollouts."""
    live_restore = _docker_info("{{.LiveRestoreEnabled}}") == "true"
    before = run.load.failed
    restart_dockerd()
    try:
        wait_for(lambda: set(run.serving().values()) == {"v1"}, 60)
    except AssertionError:
        raise Miss(f"the fleet did not recover: {run.serving()}") from None
    recovered = run.load.failed
    run.roll("v2")
    run.wait_done()
    run.expect_serving("v2")
    if run.load.failed != recovered or before:
        raise Miss(f"{run.load.failed - recovered} requests failed after the recovery, "
                   f"{before} before the restart")
    if not live_restore:
        # Without live-restore the engine stops every container when it stops.
        run.excused = recovered - before
        run.note = (f"{run.excused} requests failed while the engine (without live-restore) "
                    "was down and its containers stopped")
    return "recovered; next rollout done"


def restart_dockerd() -> None:
    """Stop dockerd (SIGTERM) and start it again (the rig's way); returns once it answers."""
    pid = int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True,
                             check=True).stdout.split()[0])
    os.kill(pid, signal.SIGTERM)
    # Wait for the process itself: it stops answering before it has removed its pid file.
    wait_for(lambda: not process_alive(pid), 60, "dockerd to exit")
    rig.ensure_dockerd()


def _docker_info(fmt: str) -> str:
    return subprocess.run(["docker", "info", "--format", fmt], capture_output=True,
                          text=True).stdout.strip()


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    expected: str
    body: Callable[[Run], str]
    etcd_members: int = 0  # 0: the given (shared) etcd; else a fresh cluster of this size


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("never_ready", "new version never ready", "halted as expected", never_ready),
    Scenario("missing_tag", "image tag does not exist", "update refused; v1 kept", missing_tag),
    Scenario("registry_down", "registry down during pull", "halted as expected", registry_down),
    Scenario("crash", "new version crashes at start", "halted as expected", crash),
    Scenario("slow_client", "20 s request during the switch",
             "rolled out; held requests done on v1", slow_client),
    Scenario("back_to_back", "v1 -> v2 -> v3 -> v2 back to back",
             "converged on the last (v2)", back_to_back),
    Scenario("rollback", "rollback under load", "rolled back, then --to r2", rollback),
    Scenario("auto_revert", "auto-revert under load (v2 fails on the second host)",
             "reverted to v1", auto_revert),
    Scenario("failed_bake", "new version unhealthy during its bake",
             "switched back; halted as expected", failed_bake),
    Scenario("health_remediation", "every host unhealthy at once (maxParallel 1)",
             "remediated one host at a time", health_remediation),
    Scenario("kill9_gantryd", "kill -9 of the slot holder's gantryd",
             "rolled out; killed host recovered", kill9_gantryd),
    Scenario("kill9_proxy", "kill -9 of a proxy mid-rollout", "rolled out; proxy restarted",
             kill9_proxy),
    Scenario("corrupt_proxy_state", "corrupt proxy state file, proxy killed -9",
             "state set aside; route restored; rolled out", corrupt_proxy_state),
    Scenario("proxy_upgrade", "proxy upgrade under load", "upgraded; rolled out",
             proxy_upgrade),
    Scenario("etcd_member_down", "1 of 3 etcd members killed", "rolled out", etcd_member_down,
             etcd_members=3),
    Scenario("etcd_outage", f"etcd down {ETCD_OUTAGE} s mid-rollout", "rolled out", etcd_outage,
             etcd_members=3),
    Scenario("dockerd_restart", "dockerd restarted between rollouts",
             "recovered; next rollout done", dockerd_restart),
)}


# --- running ----------------------------------------------------------------------------------

def run_scenario(name: str, images: dict[str, str], endpoints: list[str] | None = None,
                 project: str | None = None) -> Row:
    """Run one scenario on a fresh fleet (on `endpoints`, or a fresh etcd cluster when the
    scenario needs one) and answer its row. Leaves no container or process behind."""
    sc = SCENARIOS[name]
    row = Row(sc.title, sc.expected)
    project = project or f"sc-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    cluster = rig.EtcdCluster(size=sc.etcd_members).start() if sc.etcd_members else None
    try:
        if cluster is None and not endpoints:
            raise ValueError("run_scenario needs etcd endpoints")
        with open_fleet(cluster.endpoints if cluster else endpoints, project) as fleet:
            _run_on(sc, fleet, images, cluster, row)
    finally:
        if cluster is not None:
            cluster.stop()
        _remove_containers(project)
        row.seconds = time.monotonic() - started
    return row


def _run_on(sc: Scenario, fleet: Fleet, images, cluster, row: Row) -> None:
    fleet.deploy_v1(images, **BASE_CONFIG)
    targets = [fleet.address(h) for h in HOSTS]
    load = loadgen.Load(targets, short_workers=2, slow_workers=1, slow_seconds=SLOW_SECONDS,
                        timeout=30, pause=0.05)
    run = Run(fleet, images, load, dict(BASE_CONFIG), cluster)
    load.start()
    try:
        load.wait_for(lambda ld: all(ld.stats[t].sent >= 3 for t in targets), 20)
        row.outcome = sc.body(run)
    except Miss as exc:
        row.outcome = f"MISS: {exc}"
    except Exception as exc:  # a broken check or rig: the row shows it
        row.outcome = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row.detail = traceback.format_exc()
    finally:
        load.stop()
        held = [h.join() for h in run.held]
    row.requests = load.sent + len(held)
    row.failed = load.failed + sum(not ok for ok, _ in held)
    row.excused, row.note = run.excused, run.note
    row.leaked = _settle(fleet)
    if not row.ok:
        errors = "\n".join(load.errors()[:20])
        row.detail += f"\nload errors:\n{errors}\n{fleet.logs()}"


def leaks(project: str) -> list[str]:
    """Containers of `project` beyond one running per simulated host, plus stopped ones."""
    fmt = f'{{{{.ID}}}} {{{{.State}}}} {{{{.Label "{MACHINE_LABEL}"}}}}'
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={PROJECT_LABEL}={project}",
                          "--format", fmt],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    found, seen = [], set()
    for line in filter(None, out):
        cid, state, machine = (line.split() + ["", ""])[:3]
        if state != "running" or machine not in HOSTS or machine in seen:
            found.append(f"{cid} {state} {machine}")
        seen.add(machine)
    return found


def _settle(fleet: Fleet) -> int:
    """Leaked containers once the fleet had time to finish what it retires."""
    try:
        wait_for(lambda: not leaks(fleet.project), SETTLE_TIMEOUT)
    except AssertionError:
        pass
    return len(leaks(fleet.project))


def _remove_containers(project: str) -> None:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
