"""End to end: 3 simulated hosts (`gantryd run` subprocesses with their own machine name,
proxy and bind address) on real etcd, dockerd and registry.

Faults (a version that never gets ready, kill -9 of the slot holder, etcd members lost...)
are the scenarios of tests/scorecard, which run under load and count leaked containers."""
from __future__ import annotations

import pytest

import re

import loadgen  # scripts/ (on sys.path via tests/conftest.py)
from gantryd import rollout
from proxy.client import ProxyClient

from fleet_helpers import HOSTS, component, containers, wait_for


@pytest.mark.long
def test_rollout_one_host_at_a_time_under_load(fleet, test_images):
    fleet.deploy_v1(test_images)
    targets = [fleet.address(h) for h in HOSTS]
    with loadgen.Load(targets, short_workers=2, timeout=10) as load:
        load.wait_for(lambda ld: all(ld.stats[t].sent >= 5 for t in targets), 20)
        fleet.setconfig(component(test_images, "v2", fleet.port))
        fleet.update()
        fleet.wait_done()
        load.wait_for(lambda ld: all(ld.stats[t].versions["v2"] >= 3 for t in targets), 20)
    assert load.failed == 0, load.errors()
    assert load.versions()["v1"] > 0 and load.versions()["v2"] > 0
    assert sorted(fleet.acquired(2)) == ["h1", "h2", "h3"]
    assert rollout.max_overlap(fleet.store.events("web"), revision=2) == 1
    statuses = fleet.store.machines("web")
    assert {(m.status, m.image) for m in statuses} == {("ready", fleet.store.desired("web").image)}
    # Each host freed its slot once the old container was drained, before stopping and
    # removing it (outside the slot); no request failed meanwhile (above).
    for h in HOSTS:
        wait_for(lambda h=h: len(release_steps(fleet, h)) == 2, 20,
                 f"{h} to remove its old container\n{fleet.logs()}")
        assert ["released" in step for step in release_steps(fleet, h)] == [True, False], \
            fleet.logs()


def release_steps(fleet, host: str) -> list[str]:
    """In `host`'s daemon log (one process: its order is the order of the steps), after its
    last slot was taken: the release of the slot and the removal of the old container."""
    lines = (fleet.host_dir(host) / "gantryd.log").read_text(errors="replace").splitlines()
    taken = max(i for i, line in enumerate(lines) if re.search(r"web: slot \d+ taken", line))
    return [line for line in lines[taken:]
            if re.search(r"web: (slot \d+ released|stopped and removed)", line)]


@pytest.mark.long
def test_max_parallel_two(fleet, test_images):
    fleet.deploy_v1(test_images, rollout={"maxParallel": 2})
    fleet.setconfig(component(test_images, "v2", fleet.port, rollout={"maxParallel": 2}))
    fleet.update()
    fleet.wait_done()
    events = [e for e in fleet.store.events("web") if e.revision == 2]
    assert sorted(e.machine for e in events if e.kind == "acquired") == ["h1", "h2", "h3"]
    assert {e.slot for e in events if e.kind == "acquired"} <= {0, 1}
    assert rollout.max_overlap(events) <= 2
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}


def test_restart_does_not_redeploy(fleet, test_images, docker_client):
    fleet.deploy_v1(test_images)
    before = {h: containers(docker_client, fleet.project, h) for h in HOSTS}
    events = len(fleet.store.events("web"))
    assert fleet.terminate("h2") == 0  # SIGTERM: clean exit, containers keep running
    assert fleet.answers("h2") == "v1"
    assert fleet.status("h2") is None  # its status left with its lease
    fleet.kill9("h3")
    fleet.start("h2")
    fleet.start("h3")
    fleet.wait_done()
    after = {h: containers(docker_client, fleet.project, h) for h in HOSTS}
    assert after == before
    assert len(fleet.store.events("web")) == events


def test_config_change_rolls_out(fleet, test_images):
    env = [{"name": "GREETING", "value": "one"}]
    fleet.deploy_v1(test_images, hosts=("h1", "h2"), environmentVariables=env)
    first = fleet.store.desired("web")
    assert "GREETING=one" in fleet.answers("h1", "/cgi-bin/env")
    env2 = [{"name": "GREETING", "value": "two"}]
    fleet.setconfig(component(test_images, "v1", fleet.port, environmentVariables=env2))
    assert fleet.store.desired("web") == first  # setconfig alone changes nothing
    fleet.update()
    fleet.wait_done()
    second = fleet.store.desired("web")
    assert second.image == first.image and second.config_hash != first.config_hash
    for h in ("h1", "h2"):
        assert "GREETING=two" in fleet.answers(h, "/cgi-bin/env")
    assert rollout.max_overlap(fleet.store.events("web"), second.revision) == 1


def test_stop_and_kill(fleet, test_images, docker_client):
    fleet.deploy_v1(test_images, hosts=("h1", "h2"))
    fleet.cli("stop", fleet.project, "-c", "web")
    fleet.wait_done()
    assert {m.status for m in fleet.store.machines("web")} == {"stopped"}
    for h in ("h1", "h2"):
        assert containers(docker_client, fleet.project, h) == []
        assert fleet.answers(h).startswith("error")
    fleet.update()  # back up
    fleet.wait_done()
    assert {fleet.answers(h) for h in ("h1", "h2")} == {"v1"}
    fleet.cli("kill", fleet.project, "-c", "web")
    fleet.wait_done()
    assert {m.status for m in fleet.store.machines("web")} == {"killed"}
    assert all(containers(docker_client, fleet.project, h) == [] for h in ("h1", "h2"))


def test_canary_is_left_alone_until_the_next_fleet_update(fleet, test_images, docker_client,
                                                           engine):
    from gantry.config import parse_config
    from gantry.lifecycle import Host, Lifecycle
    from gantry.progress import Reporter

    fleet.deploy_v1(test_images, hosts=("h1", "h2"))
    # A local `gantry update` on h1 (same machine name, proxy and lock dir as its gantryd).
    env = fleet.host_env("h1")
    comp = parse_config({"components": [component(test_images, "v3", fleet.port)]}).components[0]
    import os
    os.environ["GANTRY_LOCK_DIR"] = env["GANTRY_LOCK_DIR"]
    try:
        host = Host(engine, ProxyClient(env["GANTRY_PROXY_SOCKET"]), fleet.project, "h1",
                    proxy_bind=HOSTS["h1"], origin="gantry", reporter=Reporter())
        Lifecycle(host).update(comp)
    finally:
        del os.environ["GANTRY_LOCK_DIR"]
    wait_for(lambda: fleet.status("h1").status == "canary", 30, "h1 to report canary")
    assert fleet.answers("h1") == "v3" and fleet.answers("h2") == "v1"
    out = fleet.wait()
    assert out.returncode == 0 and "canary hosts: h1" in out.stdout
    # A fleet update with a newer revision takes the host back.
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    fleet.wait_done()
    assert {fleet.answers(h) for h in ("h1", "h2")} == {"v2"}
    assert fleet.status("h1").status == "ready"
