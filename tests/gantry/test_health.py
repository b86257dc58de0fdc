"""gantry.health: what "unhealthy" means for monitor, bake and fleet remediation."""
from __future__ import annotations

from gantry import health as H
from gantry_helpers import make_component


def test_streak_counts_consecutive_failures_of_one_container():
    streak = H.Streak(limit=3)
    for problems in (["404"], ["404"], [], ["404"], ["404"]):
        streak.observe("a", problems)
    assert streak.failures == 2 and not streak.unhealthy  # a pass starts over
    streak.observe("a", ["timeout"])
    assert streak.unhealthy and streak.describe() == "unhealthy (3/3): timeout"
    streak.observe("b", ["404"])  # a new container starts over too
    assert streak.failures == 1 and not streak.unhealthy
    streak.observe("b", ["exited"], gone=True)  # a stopped container: at once
    assert streak.unhealthy
    streak.reset()
    assert (streak.container, streak.failures, streak.unhealthy) == (None, 0, False)


def test_checks_and_interval_fall_back_to_the_ready_checks():
    with_health = make_component()
    assert H.checks_of(with_health) == with_health.health_checks
    ready_only = make_component(healthChecks=[])
    assert H.checks_of(ready_only) == ready_only.ready_checks
    assert H.interval_of(ready_only) == 1.0  # ready checks every 0.2 s: health rounds 1 s
    slow_ready = make_component(healthChecks=[], readyChecks=[
        {"kind": "http", "port": 8080, "path": "/health", "interval": 3}])
    assert H.interval_of(slow_ready) == 3.0
    assert H.interval_of(with_health) == min(c.interval for c in with_health.health_checks)
    assert H.interval_of(make_component(healthChecks=[], readyChecks=[])) == 1.0


def test_fleet_health_watch_probes_a_seen_container_without_asking_docker(life, docker_client,
                                                                          caplog):
    """gantryd's health watch (gantryd/health.py): while Docker's event stream is up and
    reports nothing of ours, a passing round is the probe alone (no Docker or proxy call);
    a reported change looks again; a container that dies unreported fails its probe, is
    looked at again and counts as gone at once."""
    import threading

    from gantry import checks as C
    from gantry_helpers import component_dict
    from gantryd.health import HealthWatch
    from gantryd.store import Desired
    from rig import wait_for

    spec = component_dict(tag="v1", healthFailures=5)
    first = life.update(make_component(**spec)).container
    # One timeline: "look" (a Docker call), True/False (a probe round that passed/failed).
    timeline: list = []
    runtime, probe_all = life.runtime, C.probe_all
    for name in ("inspect", "list"):
        real = getattr(runtime, name)
        setattr(runtime, name, lambda *a, real=real: timeline.append("look") or real(*a))

    def probed(*args):
        problems = probe_all(*args)
        timeline.append(not problems)
        return problems
    C.probe_all = probed
    rounds = lambda: sum(1 for t in timeline if isinstance(t, bool))  # noqa: E731
    unhealthy = threading.Event()
    watch = HealthWatch(life, on_unhealthy=unhealthy.set)
    watch.containers_changed(watched=True)
    assert watch.due("web", Desired(status="ready", revision=1, component=spec), ready=True) \
        is None
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: rounds() >= 2, 20, "two rounds")
        start = len(timeline)
        wait_for(lambda: rounds() >= 6, 20, "four more rounds")
        window = timeline[start:]
        # Probes alone: Docker is asked only after a failed probe (a slow machine may time
        # one out), never after a passing one.
        for before, item in zip(window, window[1:], strict=False):
            assert item != "look" or before in ("look", False), window
        assert window.count(True) >= 1
        seen = timeline.count("look")
        watch.containers_changed(watched=True)  # Docker said something: look again
        wait_for(lambda: timeline.count("look") > seen, 20, "a fresh look after the change")
        docker_client.containers.get(first.id).kill()  # dies, and nobody tells the watch
        wait_for(unhealthy.is_set, 20, "the dead container to count as unhealthy")
        # As gone, at once: not after healthFailures (5) failed rounds. (A round during the
        # kill may still find it running, refusing connections: one failure before.)
        # (Exited if a round still found it; no longer running if it was gone by then.)
        gone = [r.message for r in caplog.records
                if "exited" in r.message or "no longer running" in r.message]
        assert gone and "(5/5)" not in gone[0], caplog.text
    finally:
        C.probe_all = probe_all
        stop.set()
        watch.poke()
        thread.join(10)
    assert not thread.is_alive()


def test_fleet_health_watch_counts_a_live_container_that_vanished_as_gone():
    """The race CI hit: a round's probe fails while the container is being killed (Docker
    still says running), and by the next round it is no longer live at all. The watch must
    count the container it judged as gone and wake the daemon, not wait for a verdict."""
    import threading

    from gantry import checks as C
    from gantry_helpers import component_dict
    from gantryd.health import HealthWatch
    from gantryd.store import Desired

    class Live:
        id, short_id = "c" * 64, "c" * 12

    class Info:
        running = True

    class Runtime:
        def inspect(self, _id):
            return Info()

    class Lifecycle:
        runtime = Runtime()
        live: object | None = Live()

        def current(self, _component):
            return self.live

    life, woken = Lifecycle(), threading.Event()
    spec = component_dict(tag="v1", healthFailures=5)
    watch = HealthWatch(life, on_unhealthy=woken.set)
    watch.due("web", Desired(status="ready", revision=1, component=spec), ready=True)
    model = watch._watched["web"][1]
    real = C.probe_all
    C.probe_all = lambda *a: ["connection reset"]
    try:
        watch._round("web", model)  # failed probe, still running: 1 of 5
        assert not woken.is_set()
        life.live = None  # died, and is no longer the live container
        watch._round("web", model)
    finally:
        C.probe_all = real
    assert woken.is_set()
    assert watch._streaks["web"].gone and watch._streaks["web"].container == Live.id
