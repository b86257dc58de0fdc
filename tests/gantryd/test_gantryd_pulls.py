"""Pull slots (rollout.maxParallelPulls, gantryd/pulls.py) against the real etcd: hosts racing
to pull never hold more pull slots at once than the limit, and every slot is released."""
from __future__ import annotations

import threading

from gantry.config import parse_config
from gantry.errors import ImageError
from gantryd import rollout
from gantryd.pulls import Pulls
from gantryd.store import PULL, SWITCH, Desired

from fleet_helpers import wait_for

LIMIT, HOSTS = 2, 5


def desired(store, limit: int | None) -> Desired:
    comp = parse_config({"components": [{
        "name": "web", "repo": "localhost:5000/x/app",
        "rollout": {"maxParallelPulls": limit}}]}).components[0]
    new = Desired("ready", 1, "localhost:5000/x/app@sha256:1", comp.spec_hash(), comp.to_dict())
    return store.change_desired(["web"], lambda name, current: new)["web"]


class Registry:
    """The engines of HOSTS simulated hosts pulling from one registry: a pull blocks until
    the test opens the gate, so the test sees how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.gate = threading.Event()

    def engine(self, fail: bool = False) -> "Engine":
        return Engine(self, fail)


class Engine:
    def __init__(self, registry: Registry, fail: bool) -> None:
        self.registry, self.fail, self.pulled = registry, fail, False

    def has_image(self, ref: str) -> bool:
        return self.pulled

    def pull(self, ref: str) -> None:
        r = self.registry
        with r.lock:
            r.active += 1
            r.peak = max(r.peak, r.active)
        try:
            assert r.gate.wait(30), "the test never opened the gate"
            if self.fail:
                raise ImageError(f"cannot pull {ref}: registry said no")
            self.pulled = True
        finally:
            with r.lock:
                r.active -= 1


def test_pull_slots_never_overlap_beyond_the_limit(store):
    want = desired(store, LIMIT)
    registry = Registry()
    leases = [store.etcd.lease(10) for _ in range(HOSTS)]
    hosts = [Pulls(store, f"h{i}", registry.engine(fail=i == 0)) for i in range(HOSTS)]
    statuses: dict[str, list[str]] = {p.machine: [] for p in hosts}
    errors: list[str] = []

    def host(i: int) -> None:
        pulls = hosts[i]
        try:  # a waiting host asks again (the daemon does on the slot's release event)
            wait_for(lambda: pulls.pull("web", want, leases[i].id,
                                        lambda status, note: statuses[pulls.machine]
                                        .append(status)), 60, f"{pulls.machine}'s pull")
        except ImageError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=host, args=(i,)) for i in range(HOSTS)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: registry.active == LIMIT, 30, f"{LIMIT} pulls at once")
        # The others wait for a pull slot while LIMIT pulls run.
        wait_for(lambda: sum("waiting" in s for s in statuses.values()) == HOSTS - LIMIT, 30,
                 "the other hosts to wait")
        registry.gate.set()
        for t in threads:
            t.join(60)
        assert registry.peak == LIMIT
        assert errors == ["cannot pull localhost:5000/x/app@sha256:1: registry said no"]
        events = [e for e in store.events("web") if e.kind.startswith("pull-")]
        assert sorted(e.machine for e in events if e.kind == "pull-acquired") == \
            [f"h{i}" for i in range(HOSTS)]
        assert [e.machine for e in events if e.kind == "pull-failed"] == ["h0"]
        assert len([e for e in events if e.kind == "pull-released"]) == HOSTS - 1
        assert rollout.max_overlap(store.events("web"), pool=PULL) == LIMIT
        assert rollout.max_overlap(store.events("web"), pool=SWITCH) == 0
        assert store.holders("web", PULL) == []
    finally:
        registry.gate.set()
        for lease in leases:
            lease.revoke()


def test_without_a_limit_hosts_pull_at_once_and_take_no_slot(store):
    want = desired(store, None)
    registry = Registry()
    registry.gate.set()
    lease = store.etcd.lease(10)
    try:
        seen: list[str] = []
        assert Pulls(store, "h1", registry.engine()).pull("web", want, lease.id,
                                                          lambda s, n: seen.append(s))
        assert seen == ["pulling"] and store.events("web") == []
    finally:
        lease.revoke()
