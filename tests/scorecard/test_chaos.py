"""The chaos run (tests/scorecard/chaos.py) as part of the suite: 2 minutes of faults, then
convergence. A new seed every run (or GANTRY_CHAOS_SEED); a failure names it, and
``scripts/chaos --minutes 2 --seed S --faults ...`` replays the same faults.

The suite leaves dockerd out: restarting it takes the engine from every test running
beside this one, and the serial scenario dockerd_restart covers it. Without it the run
touches nothing shared (its own etcd cluster, registry, daemons and proxies), so it runs
with the others, not alone after them. scripts/chaos runs every fault."""
from __future__ import annotations

import os
import random

import pytest

import chaos as C
from gantryd.store import Event

pytestmark = pytest.mark.scorecard

SUITE_FAULTS = tuple(f for f in C.FAULTS if f != "dockerd")


def test_plan_is_a_function_of_the_seed():
    a = C.plan(7, 120, C.FAULTS)
    assert a == C.plan(7, 120, C.FAULTS) and a != C.plan(8, 120, C.FAULTS)
    assert all(0 < x.at for x in a) and all(x.at < 120 for x in a if not x.recover)
    down: set[tuple[str, str]] = set()
    for x in a:  # every fault undone, one etcd member down at most, no proxy kill of a
        key = (x.fault, x.target)  # host whose gantryd is down
        if x.recover:
            down.remove(key)
            continue
        assert key not in down and not (x.fault == "etcd_member" and any(
            f == "etcd_member" for f, _ in down))
        assert not (x.fault == "kill_proxy" and ("kill_gantryd", x.target) in down)
        if x.fault in C.HOLD:
            down.add(key)
    assert not down
    assert {x.fault for x in C.plan(7, 120, ["registry"])} == {"registry"}
    with pytest.raises(ValueError, match="faults must be some of"):
        C.plan(7, 120, ["dockerd", "lightning"])


def test_a_killed_gantryd_holds_no_slot_from_its_kill_on():
    def acquired(host: str, at: int) -> Event:
        return Event("acquired", host, 2, slot=0, etcd_revision=at)
    events = [acquired("h1", 10), acquired("h2", 15)]
    assert C.slot_overlap(events, kills=[("h1", 11)]) == 1
    assert C.slot_overlap(events, kills=[]) == 2  # h1 never released: it was still working
    # h1's lease expired while it worked: it records `lost` only when it releases.
    late = [acquired("h1", 10), acquired("h2", 12), Event("lost", "h1", 2, 0, etcd_revision=14)]
    assert C.slot_overlap(late, kills=[]) == 2


def test_failures_are_attributed_to_the_proxy_kill_they_were_in_flight_at():
    a, b = ("127.0.0.2", 80), ("127.0.0.3", 80)
    kill = C.ProxyKill(a, before=10.0, after=10.1, in_flight=2)
    at_kill = C.Failure(a, began=9.5, ended=10.2, why="reset")
    later = C.Failure(a, began=10.2, ended=10.3, why="reset")
    elsewhere = C.Failure(b, began=9.5, ended=10.2, why="reset")
    per_kill, unexplained = C.attribute([at_kill, later, elsewhere], [kill])
    assert per_kill == {kill: 1} and unexplained == [later, elsewhere]


@pytest.mark.long(160)
@pytest.mark.timeout(480)
def test_chaos(project, test_images):
    seed = int(os.environ.get("GANTRY_CHAOS_SEED") or random.SystemRandom().randrange(10 ** 6))
    result = C.run_chaos(2, seed, SUITE_FAULTS, project=project, progress=None)
    report = (f"{result.summary()}\nproblems: {result.problems}\n" + "\n".join(result.log)
              + f"\nreplay: scripts/chaos --minutes 2 --seed {seed} "
              f"--faults {','.join(SUITE_FAULTS)}")
    print(report)
    assert result.ok, report
    assert result.max_overlap <= 1 and result.leaked == 0 and result.refused == 0, report
    assert result.convergence is not None and sum(result.faults.values()) >= 10, report
