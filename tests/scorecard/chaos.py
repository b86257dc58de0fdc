"""The chaos run: random faults every few seconds on a 3-host fleet under load while
rollouts, rollbacks and stops go on, with the fleet's invariants checked throughout and once
the faults stop (scripts/chaos prints the figures; tests/scorecard/test_chaos.py is the
suite's short run).

One seed drives everything random: the fault schedule (:func:`plan`, a pure function of the
seed, so a failing run replays with the same faults at the same offsets) and the sequence of
operations (update to v1/v2/v3, rollback, stop then update). The faults:

- ``kill_gantryd``: kill -9 of a host's daemon, started again 1-8 s later;
- ``kill_proxy``: kill -9 of a host's proxy (its daemon starts it again);
- ``etcd_member``: kill -9 of one of the 3 etcd members, started again 2-10 s later;
- ``dockerd``: dockerd stopped (SIGTERM) and started again;
- ``registry``: the run's registry stopped, started again 2-10 s later. The images come from
  a registry of the run's own, so that stopping it disturbs no other test.

Invariants: never more rollout slot holders than maxParallel (from the events in etcd, a
gantryd killed -9 holding nothing from its kill on); every host converges on the last desired
state once the faults stop; no leaked container; no failed request but those in flight
through a proxy at its kill -9 and those sent while the component was stopped; no refused
connection outside a stop.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import docker

from scenarios import (BASE_CONFIG, HOSTS, Fleet, _remove_containers, _settle, component,
                       kill_proxy, loadgen, open_fleet, restart_dockerd, rig, wait_for)
from fleet_helpers import private_copy  # noqa: I001  (on sys.path once scenarios is imported)

from gantryd import rollout
from gantryd.etcd import EtcdError
from gantryd.store import Event, StoreError

FAULTS = ("kill_gantryd", "kill_proxy", "etcd_member", "dockerd", "registry")
VARIANTS = ("v1", "v2", "v3")
GAP = (2.0, 6.0)  # seconds between two faults
HOLD = {"kill_gantryd": (1.0, 8.0), "etcd_member": (2.0, 10.0), "registry": (2.0, 10.0)}
MEMBERS = ("0", "1", "2")
OPS = {"update": 3, "rollback": 1, "stop_update": 1}  # operation -> weight
NO_WAIT = 0.2  # share of operations followed at once by the next one (back to back)
OP_TIMEOUT = 60  # an operation not done by then is logged as such; the next one follows
CONVERGE_TIMEOUT = 120
MAX_FAILURES_LOGGED = 50
CHECK_EVERY = 5
# A longer ready deadline than the scorecard's: two cores busy with faults, not a bad version.
CONFIG = {**BASE_CONFIG, "readyTimeout": 10, "retainImages": 2}


@dataclass(frozen=True)
class Action:
    """One step of the fault schedule: inject `fault` on `target`, or recover from it."""

    at: float  # seconds after the start of the faults
    fault: str
    target: str
    recover: bool = False

    def __str__(self) -> str:
        return f"{'recover' if self.recover else 'inject'} {self.fault} {self.target}"


def plan(seed: int, seconds: float, faults: Sequence[str]) -> list[Action]:
    """The fault schedule of a run, a pure function of its arguments. One etcd member down
    at most (quorum stays); a proxy is killed only while its daemon runs (which restarts it)."""
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        raise ValueError(f"faults must be some of {', '.join(FAULTS)}; got {list(faults)}")
    rng = random.Random(f"faults/{seed}")
    down_until: dict[tuple[str, str], float] = {}
    actions: list[Action] = []

    def down(fault: str, target: str, t: float) -> bool:
        return down_until.get((fault, target), 0.0) > t

    def free(fault: str, target: str, t: float) -> bool:
        if fault == "etcd_member":
            return not any(down(fault, m, t) for m in MEMBERS)
        if fault == "kill_proxy":
            return not down("kill_gantryd", target, t)
        return not down(fault, target, t)

    targets = {"kill_gantryd": list(HOSTS), "kill_proxy": list(HOSTS), "etcd_member": MEMBERS}
    t = rng.uniform(*GAP)
    while t < seconds:
        fault = rng.choice(list(faults))
        candidates = [x for x in targets.get(fault, [fault]) if free(fault, x, t)]
        if candidates:
            target = rng.choice(candidates)
            actions.append(Action(t, fault, target))
            if fault in HOLD:
                until = t + rng.uniform(*HOLD[fault])
                down_until[(fault, target)] = until
                actions.append(Action(until, fault, target, recover=True))
        t += rng.uniform(*GAP)
    return sorted(actions, key=lambda a: (a.at, not a.recover))


def slot_overlap(events: Sequence[Event], kills: Sequence[tuple[str, int]]) -> int:
    """Most rollout slots held at once according to the events, where a gantryd killed -9
    (host, the etcd revision read right after its kill) holds nothing from its kill on: the
    process is gone, its lock key only waits for its lease to expire."""
    lost = [Event("lost", host, e.revision, e.slot, etcd_revision=revision + 0.5)  # type: ignore
            for host, revision in kills for e in events
            if e.machine == host and e.kind == "acquired" and e.etcd_revision <= revision]
    return rollout.max_overlap([*events, *lost])


@dataclass(frozen=True)
class ProxyKill:
    """A proxy's kill -9: the requests through `target` in flight then (at most `in_flight`)
    are the only ones it may fail."""

    target: tuple[str, int]
    before: float  # time.monotonic() just before the kill
    after: float  # ... and just after
    in_flight: int


@dataclass(frozen=True)
class Failure:
    """A request that failed while the component was meant to serve."""

    target: tuple[str, int]
    began: float
    ended: float
    why: str

    def during(self, kill: ProxyKill) -> bool:
        return self.target == kill.target and self.began <= kill.after and \
            self.ended >= kill.before


def attribute(failures: Sequence[Failure], kills: Sequence[ProxyKill]
              ) -> tuple[Counter, list[Failure]]:
    """Each failure to the first proxy kill it was in flight at: (failures per kill, the
    failures no kill explains)."""
    per_kill: Counter = Counter()
    unexplained = []
    for f in failures:
        kill = next((k for k in kills if f.during(k)), None)
        if kill is None:
            unexplained.append(f)
        else:
            per_kill[kill] += 1
    return per_kill, unexplained


class Registry:
    """The run's own registry on a free loopback port, stopped and started at will with its
    storage kept (the rig's shared registry serves other tests meanwhile)."""

    def __init__(self, home: Path):
        self.home = home
        port = rig.free_port()
        self.addr, self.name = f"127.0.0.1:{port}", f"localhost:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = rig.start_registry(self.addr, self.home)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None


@dataclass
class ChaosResult:
    seed: int
    seconds: float  # of faults
    max_parallel: int
    faults: Counter = field(default_factory=Counter)  # injected, per fault
    skipped: int = 0  # scheduled faults that found nothing to break (a proxy not up yet)
    ops: Counter = field(default_factory=Counter)  # issued, per operation
    refused_ops: int = 0  # commands that exited non-zero (e.g. an update while dockerd was down)
    halts: list[str] = field(default_factory=list)
    revisions: int = 0
    rollouts: list[float] = field(default_factory=list)  # seconds each waited-for one took
    requests: int = 0
    failed: int = 0
    failed_serving: int = 0  # failed, neither begun nor ended while stopped
    excused_kills: int = 0  # of those, in flight through a proxy at its kill -9
    in_flight_at_kills: int = 0
    sent_stopped: int = 0  # requests that ended while the component was stopped
    excused_stopped: int = 0  # failed, begun or ended while stopped
    refused: int = 0  # connections refused outside a stop
    max_overlap: int = 0
    convergence: float | None = None  # seconds from the end of the faults
    resumed: str = ""  # the final update, when the last desired state was halted or stopped
    leaked: int = 0
    ghosts: list[str] = field(default_factory=list)  # engine tasks docker lost (see ghosts())
    total: float = 0.0
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        converged = (f"{self.convergence:.1f} s" if self.convergence is not None
                     else "never") + (f" ({self.resumed})" if self.resumed else "")
        return "\n".join([
            f"seed {self.seed}: {self.seconds:.0f} s of faults, {self.total:.0f} s in all",
            f"faults injected: {faults} ({self.skipped} skipped)",
            f"operations: {ops} ({self.refused_ops} commands refused); {self.revisions} "
            f"revisions; {len(self.halts)} halts",
            f"rollouts waited for: {len(self.rollouts)}, done in median "
            f"{statistics.median(self.rollouts or [0]):.1f} s, max "
            f"{max(self.rollouts or [0]):.1f} s",
            f"requests {self.requests - self.sent_stopped} while serving, "
            f"{self.failed_serving} failed: {self.excused_kills} of the "
            f"{self.in_flight_at_kills} in flight at proxy kills; {self.refused} refused",
            f"requests {self.sent_stopped} while stopped (from the stop until every host "
            f"served again), {self.excused_stopped} failed",
            f"max slot overlap {self.max_overlap} (maxParallel {self.max_parallel})",
            f"converged {converged} after the faults stopped; {self.leaked} containers leaked",
            *([f"engine: {len(self.ghosts)} container tasks lost by dockerd across its "
               f"restarts (killed): {', '.join(self.ghosts)}"] if self.ghosts else []),
        ])


class Chaos:
    """A run in progress: the fleet, its services and load, and what was seen."""

    def __init__(self, fleet: Fleet, cluster: rig.EtcdCluster, registry: Registry,
                 load: loadgen.Load, images: dict[str, str], config: dict,
                 result: ChaosResult, progress: Callable[[str], None] | None):
        self.fleet, self.cluster, self.registry, self.load = fleet, cluster, registry, load
        self.images, self.config, self.result, self.progress = images, config, result, progress
        self.started = time.monotonic()
        self.next_check = 0.0
        self.engine_tasks: dict[int, str] | None = None  # shims() at the start, with dockerd
        self.lock = threading.Lock()
        self.kills: list[tuple[str, int]] = []
        self.proxy_kills: list[ProxyKill] = []
        self.failures: list[Failure] = []
        self.logged = 0
        self.events: dict[tuple, Event] = {}
        self.stopped_since: int | None = None  # load.sent when a stop was issued
        self.stops: list[tuple[float, float]] = []  # (issued, served again), monotonic

    # -- the record --------------------------------------------------------------------------
    def note(self, text: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {text}"
        with self.lock:
            self.result.log.append(line)
        if self.progress:
            self.progress(line)

    def failed_request(self, target: tuple[str, int], path: str, why: str,
                       began: float) -> None:
        """Loadgen's hook: every failure is kept, to be set beside the stops and the proxy
        kills; those outside a stop are logged (the first ones) beside the faults."""
        with self.lock:
            self.failures.append(Failure(target, began, time.monotonic(), why))
            if self.stopped_since is not None or self.logged >= MAX_FAILURES_LOGGED:
                return
            self.logged += 1
        self.note(f"request through {target[0]} failed: {path}: {why}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.result.problems.append(text)
        self.note(f"PROBLEM: {text}")

    # -- operations --------------------------------------------------------------------------
    def cli(self, command: str, *args: str, label: str = "") -> bool:
        """A gantryd command on the project; logged with its last line; whether it worked."""
        try:
            out = self.fleet.cli(command, self.fleet.project, *args, check=False)
        except subprocess.TimeoutExpired:
            self.note(f"op {command}: no answer in time")
            self.result.refused_ops += 1
            return False
        said = (out.stdout.strip() or out.stderr.strip()).splitlines()
        # repo@sha256:<64 hex> as <last path segment>@<8 hex>: the log stays readable.
        said = re.sub(r"\S*/([^/\s]+)@sha256:([0-9a-f]{8})[0-9a-f]*", r"\1@\2",
                      said[-1] if said else "")
        self.note(f"op {' '.join(filter(None, (command, label)))}: "
                  f"{'ok' if out.returncode == 0 else f'exit {out.returncode}'}: {said[:160]}")
        self.result.refused_ops += out.returncode != 0
        return out.returncode == 0

    def roll(self, variant: str, stopping: threading.Event) -> bool:
        path = self.fleet.write_config(component(self.images, variant, self.fleet.port,
                                                 **self.config))
        return (self.cli("setconfig", str(path), label=variant) and not stopping.is_set()
                and self.cli("update", "-c", "web", label=variant))

    def operate(self, rng: random.Random, stopping: threading.Event) -> None:
        """The operations, one after the other, until `stopping` is set."""
        while not stopping.is_set():
            op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
            variant, wait, pause = rng.choice(VARIANTS), rng.random() >= NO_WAIT, \
                rng.uniform(0.5, 3)
            self.result.ops[op] += 1
            try:
                if op == "rollback":
                    ok = self.cli("rollback", "-c", "web")
                else:
                    if op == "stop_update":
                        self.stop_window(open_=True)
                        if self.cli("stop", "-c", "web"):
                            self.settle(stopping)
                    ok = not stopping.is_set() and self.roll(variant, stopping)
                if ok and wait:
                    self.settle(stopping)
            except Exception as exc:  # a broken check must show, not end the operations
                self.problem(f"operation {op} raised {type(exc).__name__}: {exc}")
            stopping.wait(pause)

    def settle(self, stopping: threading.Event) -> None:
        """Wait until the current revision is done or halted (or OP_TIMEOUT); log which."""
        started = time.monotonic()
        seen: list = []

        def outcome() -> str | None:
            if stopping.is_set():
                return "interrupted"
            try:
                desired = self.fleet.store.desired("web")
                p = rollout.progress(desired, self.fleet.store.machines("web"))
            except (EtcdError, StoreError):
                return None
            seen[:] = [desired]
            return f"halted: {p.failed[0]}: {p.failed[1]}" if p.failed else \
                "done" if p.done else None
        try:
            what = wait_for(outcome, OP_TIMEOUT, interval=0.2)
        except AssertionError:
            what = f"not done after {OP_TIMEOUT} s"
        desired = seen[0] if seen else None
        if what == "interrupted":
            return
        self.note(f"r{desired.revision if desired else '?'} {what} "
                  f"({time.monotonic() - started:.1f} s)")
        if what.startswith("halted") and desired is not None:
            self.result.halts.append(f"r{desired.revision} {what}")
        if what == "done" and desired is not None and desired.status == "ready":
            self.result.rollouts.append(time.monotonic() - started)
            self.serving(desired)

    def serving(self, desired) -> bool:
        """Whether every host answers the desired version; closes a stop's window if so."""
        tag = (desired.component or {}).get("tag")
        if all(self.fleet.answers(h) == tag for h in HOSTS):
            self.stop_window(open_=False)
            return True
        return False

    def stop_window(self, open_: bool) -> None:
        """Requests begun or ended between a stop and the first time every host serves
        again are the stop's (counted apart: they may fail)."""
        with self.lock:
            if open_ and self.stopped_since is None:
                self.stopped_since = self.load.sent
                self.stops.append((time.monotonic(), float("inf")))
            elif not open_ and self.stopped_since is not None:
                self.result.sent_stopped += self.load.sent - self.stopped_since
                self.stopped_since = None
                self.stops[-1] = (self.stops[-1][0], time.monotonic())

    # -- faults ------------------------------------------------------------------------------
    def apply(self, action: Action) -> None:
        late = self.elapsed() - action.at
        try:
            did = self._apply(action)
        except Exception as exc:  # a fault that could not be made or undone: the run goes on
            self.problem(f"{action} failed: {type(exc).__name__}: {str(exc)[:300]}")
            return
        if did is None:
            self.result.skipped += 1
            self.note(f"fault: {action}: skipped (nothing to break)")
            return
        if not action.recover:
            self.result.faults[action.fault] += 1
        self.note(f"fault: {action}: {did}" + (f" ({late:.1f} s late: the step before took "
                                                 "that long)" if action.at and late > 1
                                                 else ""))

    def _apply(self, a: Action) -> str | None:
        f, started = self.fleet, time.monotonic()
        if a.fault == "kill_gantryd":
            if a.recover:
                if a.target in f.procs:
                    return None  # started again already (it had exited by itself)
                f.start(a.target)
                return "started again"
            f.kill9(a.target)
            self.kills.append((a.target, f.etcd.revision()))
            return "killed -9"
        if a.fault == "kill_proxy":
            from proxy.client import ProxyError
            before = time.monotonic()
            try:
                _, pid, in_flight = kill_proxy(f, self.load, a.target)
            except (ProxyError, OSError):
                return None  # not up again yet after an earlier kill
            self.proxy_kills.append(ProxyKill(f.address(a.target), before, time.monotonic(),
                                              in_flight))
            return f"pid {pid} killed -9, {in_flight} requests in flight"
        if a.fault == "etcd_member":
            if a.recover:
                self.cluster.start(int(a.target))
                return "started again"
            self.cluster.kill(int(a.target))
            return "killed -9"
        if a.fault == "dockerd":
            restart_dockerd()
            return f"restarted, answering again after {time.monotonic() - started:.1f} s"
        if a.recover:
            self.registry.start()
            return "started again"
        self.registry.stop()
        return "stopped"

    def recover_all(self) -> None:
        """Bring back whatever is still down (after an error, every fault is undone here)."""
        for host in HOSTS:
            if host not in self.fleet.procs:
                self.apply(Action(0, "kill_gantryd", host, recover=True))
        for i, m in enumerate(self.cluster.members):
            if m.proc is None or m.proc.poll() is not None:
                self.apply(Action(0, "etcd_member", str(i), recover=True))
        if not self.registry.up:
            self.apply(Action(0, "registry", "registry", recover=True))
        rig.ensure_dockerd()

    # -- invariants --------------------------------------------------------------------------
    def check(self) -> None:
        """What must hold at every moment: slot holders within maxParallel, daemons alive.
        Also kills the engine's lost tasks (ghosts()) as soon as they show: an engine bug,
        not the fleet's, that would make later containers unreachable."""
        if self.engine_tasks is not None:
            for cid in ghosts(self.engine_tasks):
                self.note(f"engine: task of container {cid} lost by dockerd; killed")
                self.result.ghosts.append(cid)
        for host, proc in list(self.fleet.procs.items()):
            if proc.poll() is not None:
                self.problem(f"gantryd on {host} exited by itself ({proc.returncode})")
                self.fleet.procs.pop(host, None)
                self.apply(Action(0, "kill_gantryd", host, recover=True))
        try:
            events = self.fleet.store.events("web")
        except (EtcdError, StoreError):
            return  # an etcd member just went down: the next check reads them
        for e in events:  # kept across checks: history beyond keepRevisions is pruned
            self.events[(e.etcd_revision, e.kind, e.machine, e.revision, e.slot)] = e
        overlap = slot_overlap(list(self.events.values()), self.kills)
        if overlap > self.result.max_parallel and overlap > self.result.max_overlap:
            self.problem(f"{overlap} rollout slots held at once (maxParallel "
                         f"{self.result.max_parallel})")
        self.result.max_overlap = max(self.result.max_overlap, overlap)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pace(self, until: float) -> None:
        """Wait until `until` seconds after the start, checking every CHECK_EVERY s."""
        while True:
            if self.elapsed() >= self.next_check:
                self.check()
                self.next_check = self.elapsed() + CHECK_EVERY
            left = until - self.elapsed()
            if left <= 0:
                return
            # Pacing the schedule, not synchronising with anything.
            time.sleep(max(0.0, min(left, self.next_check - self.elapsed())))

    def converged(self) -> bool:
        desired = self.fleet.store.desired("web")
        machines = self.fleet.store.machines("web")
        return (desired.status == "ready" and not desired.is_halted
                and sorted(m.machine for m in machines) == sorted(HOSTS)
                and all(rollout.host_done(desired, m) for m in machines)
                and self.serving(desired))

    def finish(self, stopped: float) -> None:
        """Every host on the last desired state (resumed when halted or stopped) within
        CONVERGE_TIMEOUT of `stopped` (when the faults stopped); then the failed requests
        accounted, leaks counted."""
        desired = self.fleet.store.desired("web")
        if desired.is_halted or desired.status != "ready":
            was = "halted" if desired.is_halted else desired.status
            self.result.resumed = f"r{desired.revision} was {was}: updated again"
            self.cli("update", "-c", "web", label="(resume)")
        try:
            wait_for(self.converged, CONVERGE_TIMEOUT, "every host on the last desired state",
                     interval=0.5)
            self.result.convergence = time.monotonic() - stopped
            self.note(f"converged on r{self.fleet.store.desired('web').revision} in "
                      f"{self.result.convergence:.1f} s")
        except AssertionError:
            statuses = {m.machine: (m.status, m.revision)
                        for m in self.fleet.store.machines("web")}
            self.problem(f"not converged {CONVERGE_TIMEOUT} s after the faults stopped: "
                         f"desired {self.fleet.store.desired('web')}, hosts {statuses}, "
                         f"serving { {h: self.fleet.answers(h) for h in HOSTS} }")
        self.load.stop()
        self.check()
        self.result.revisions = self.fleet.store.desired("web").revision
        self.account()
        self.result.leaked = _settle(self.fleet)
        if self.result.leaked:
            self.problem(f"{self.result.leaked} containers leaked")

    def account(self) -> None:
        """Every failure outside a stop must have been in flight at a proxy's kill -9, and
        no kill may fail more requests than it had in flight."""
        r = self.result
        r.requests, r.failed = self.load.sent, self.load.failed
        # A request begun or ended while stopped may fail (a stop drains, then closes).
        serving = [f for f in self.failures
                   if not any(f.began <= until and f.ended >= since for since, until in self.stops)]
        r.excused_stopped = len(self.failures) - len(serving)
        per_kill, unexplained = attribute(serving, self.proxy_kills)
        r.failed_serving = len(serving)
        r.in_flight_at_kills = sum(k.in_flight for k in self.proxy_kills)
        r.excused_kills = sum(min(n, k.in_flight) for k, n in per_kill.items())
        r.refused = sum(f.why.startswith(ConnectionRefusedError.__name__) for f in serving)
        if r.refused:
            self.problem(f"{r.refused} connections refused outside stops")
        for kill, n in per_kill.items():
            if n > kill.in_flight:
                self.problem(f"{n} requests through {kill.target[0]} failed at its proxy's "
                             f"kill -9 ({kill.before - self.started:.1f} s), more than the "
                             f"{kill.in_flight} in flight")
        for f in unexplained[:MAX_FAILURES_LOGGED]:
            self.problem(f"a request through {f.target[0]} failed at "
                         f"{f.ended - self.started:.1f} s, in flight at no proxy kill "
                         f"(began {f.began - self.started:.1f} s): {f.why}")

    def run(self, actions: Sequence[Action], ops_rng: random.Random) -> None:
        stopping = threading.Event()
        ops = threading.Thread(target=self.operate, args=(ops_rng, stopping), daemon=True)
        ops.start()
        try:
            for action in actions:
                self.pace(action.at)
                self.apply(action)
            self.pace(self.result.seconds)
        finally:
            self.recover_all()
            stopped = time.monotonic()
            self.note("faults stopped")
            stopping.set()
            ops.join(OP_TIMEOUT + 180)
        self.finish(stopped)


def shims() -> dict[int, str]:
    """The engine's containerd shims: pid -> the container id it runs."""
    out = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"containerd-shim-runc-v2") and b"moby" in argv and b"-id" in argv:
            out[pid] = argv[argv.index(b"-id") + 1].decode()
    return out


def ghosts(before: dict[int, str]) -> list[str]:
    """Container tasks started since `before` (shims()) that the engine no longer knows:
    dockerd stopped while it started a container, and after its restart it removed the
    container but not its task, which goes on holding the container's IP address (a later
    container given that address is unreachable). Killed here, by pid; answers their ids."""
    # The shims first, then the containers: a container has an id before it has a task, so
    # a task started meanwhile is of a container listed (never taken for a lost one).
    started = {pid: cid for pid, cid in shims().items() if pid not in before}
    listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True,
                            text=True)
    if listed.returncode != 0:
        return []  # the engine is restarting: the next check looks again
    known = set(listed.stdout.split())
    lost = {pid: cid for pid, cid in started.items() if cid not in known}
    for pid in lost:
        for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                    text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return sorted(cid[:12] for cid in lost.values())


def _keep_logs(base: Path, into: Path) -> None:
    for log in base.rglob("*.log"):
        (into / log.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, into / log.relative_to(base))


def run_chaos(minutes: float, seed: int, faults: Sequence[str] = FAULTS, max_parallel: int = 1,
              progress: Callable[[str], None] | None = print,
              project: str | None = None, logs: Path | None = None) -> ChaosResult:
    """The whole run on a fresh 3-member etcd, a registry of its own and a fresh fleet;
    leaves no container or process behind (`logs`: a directory to keep the hosts' logs
    in)."""
    result = ChaosResult(seed, minutes * 60, max_parallel)
    actions = plan(seed, result.seconds, faults)
    project = project or f"chaos-{seed}-{uuid.uuid4().hex[:6]}"
    home = Path(tempfile.mkdtemp(prefix="chaos-"))
    cluster = rig.EtcdCluster(size=3).start()
    engine_tasks = shims()
    registry = Registry(home / "registry")
    started = time.monotonic()
    client = docker.from_env()
    try:
        registry.start()
        with contextlib.ExitStack() as stack:
            # Copies of the test images in the run's registry, under no local name: a host
            # pulls each version (again, once retainImages dropped it) from that registry.
            copies = {v: stack.enter_context(private_copy(client, v, project, registry.name))
                      for v in VARIANTS}
            images = {v: f"{repo}:{tag}" for v, (repo, tag) in copies.items()}
            fleet = stack.enter_context(open_fleet(
                cluster.endpoints, project,
                on_exit=(lambda f: _keep_logs(f.base, logs)) if logs else None))
            config = {**CONFIG, "rollout": {"maxParallel": max_parallel}}
            fleet.deploy_v1(images, **config)
            load = stack.enter_context(loadgen.Load(
                [fleet.address(h) for h in HOSTS], short_workers=2, slow_workers=1,
                slow_seconds=2, timeout=30, pause=0.01))
            chaos = Chaos(fleet, cluster, registry, load, images, config, result, progress)
            load.on_failure = chaos.failed_request
            chaos.engine_tasks = engine_tasks if "dockerd" in faults else None
            chaos.note(f"seed {seed}: {len(actions)} fault steps over {result.seconds:.0f} s "
                       f"({', '.join(faults)}), maxParallel {max_parallel}")
            chaos.run(actions, random.Random(f"ops/{seed}"))
    finally:
        cluster.stop()
        registry.stop()
        _remove_containers(project)
        if "dockerd" in faults:
            result.ghosts += ghosts(engine_tasks)
        client.close()
        shutil.rmtree(home, ignore_errors=True)
    result.total = time.monotonic() - started
    return result
