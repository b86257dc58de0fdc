"""Light hosts (gantry/simulated.py, what `scripts/bench/fleet --light` runs): real `gantryd
run` daemons, etcd, slots and proxies with in-process stand-ins for containers; and the
fault it injects: the old container cannot be stopped after the slot was released."""
from __future__ import annotations

import pytest

from gantry import simulated
from gantry.errors import GantryError

from fleet_helpers import component, wait_for

HOSTS = ("h1", "h2")
HOSTS_3 = ("h1", "h2", "h3")


def test_settings_are_checked():
    assert simulated.parse_times("start=0,stop=1.5,fail=remove") == {
        "start": 0.0, "ready": simulated.DEFAULTS["ready"], "stop": 1.5, "fail": "remove"}
    for bad, said in (("start=soon", "start: expected seconds, not 'soon'"),
                      ("begin=1", "'begin=1': expected start=S"),
                      ("stop=99", "stop: expected 0..60 seconds"),
                      ("fail=start", "'fail=start': expected start=S")):
        with pytest.raises(ValueError, match=said):
            simulated.parse_times(bad)


def test_bad_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(simulated.ENV, "ready=-1")
    with pytest.raises(GantryError, match=f"{simulated.ENV}: ready: expected 0..60"):
        simulated.from_env()


def test_stop_failure_after_the_release_is_logged_and_recorded(fleet, test_images):
    fleet.env[simulated.ENV] = "start=0,ready=0,stop=0,fail=stop"
    fleet.setconfig(component(test_images, "v1", fleet.port))
    fleet.update()
    fleet.start_all(hosts=HOSTS)
    fleet.wait_done()
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    fleet.wait_done()  # the new version is live everywhere: the failure halts nothing
    desired = fleet.store.desired("web")
    assert desired.halted is None
    assert {(m.status, m.image) for m in fleet.store.machines("web")} == {
        ("ready", desired.image)}

    def recorded() -> list:
        return [e for e in fleet.store.events("web")
                if e.kind == "retire-failed" and e.revision == desired.revision]
    wait_for(lambda: sorted(e.machine for e in recorded()) == list(HOSTS), 20,
             f"both hosts to record the failure\n{fleet.logs()}")
    assert all((e.detail or "").startswith("could not stop/remove ") for e in recorded())
    released = [e.machine for e in fleet.store.events("web")
                if e.kind == "released" and e.revision == desired.revision]
    assert sorted(released) == list(HOSTS)  # slots freed all the same
    for h in HOSTS:
        log = (fleet.host_dir(h) / "gantryd.log").read_text(errors="replace")
        assert "web: after the slot was released: could not stop/remove" in log, log
        assert "simulated failure" in log, log  # the engine's own error, as a warning


@pytest.mark.long(40)
def test_waiting_hosts_take_the_slot_in_line(fleet, test_images):
    """maxParallel 1 on three light hosts: the two that find the slot busy queue up
    (gantryd/slot_queue.py), each release wakes the one in front, the slot goes in the order
    they queued, and no waiter key is left behind."""
    fleet.env[simulated.ENV] = "start=0.5,ready=0,stop=0"
    fleet.setconfig(component(test_images, "v1", fleet.port, rollout={"maxParallel": 1}))
    fleet.update()
    fleet.start_all(hosts=tuple(HOSTS_3))
    fleet.wait_done()
    marks = {h: _log(fleet, h).count("ahead in line") for h in HOSTS_3}
    fleet.setconfig(component(test_images, "v2", fleet.port, rollout={"maxParallel": 1}))
    fleet.update()
    fleet.wait_done()
    revision = fleet.store.desired("web").revision
    acquired = [e.machine for e in fleet.store.events("web")
                if e.kind == "acquired" and e.revision == revision]
    places = {}
    for h in HOSTS_3:
        lines = _log(fleet, h).split("every rollout slot is busy; ")[1 + marks[h]:]
        if lines:  # queued this rollout: its place when it joined
            places[h] = int(lines[0].split(" ", 1)[0])
    assert sorted(places.values()) == [0, 1], (places, fleet.logs())
    first = next(h for h in acquired if h not in places)
    assert acquired == [first, *sorted(places, key=places.get)], (acquired, places)
    assert fleet.store.etcd.get_prefix(fleet.store.keys.waiters("web"))[0] == []


def _log(fleet, host: str) -> str:
    return (fleet.host_dir(host) / "gantryd.log").read_text(errors="replace")
