"""End to end: 3 simulated hosts (`gantryd run` subprocesses with their own machine name,
proxy and bind address) on real etcd, dockerd and registry."""
from __future__ import annotations

import threading

import loadgen  # scripts/ (on sys.path via tests/conftest.py)
from gantry import labels as L
from gantryd import rollout
from proxy.client import ProxyClient

from conftest import HOSTS, component, wait_for  # noqa: E402  (tests/gantryd/conftest.py)


def containers(docker_client, project: str, machine: str) -> list[str]:
    return sorted(c.id for c in docker_client.containers.list(
        filters={"label": L.selector(project, machine)}))


def test_rollout_one_host_at_a_time_under_load(fleet, test_images):
    fleet.deploy_v1(test_images)
    targets = [fleet.address(h) for h in HOSTS]
    with loadgen.Load(targets, short_workers=2, timeout=10) as load:
        load.wait_for(lambda l: all(l.stats[t].sent >= 5 for t in targets), 20)
        fleet.setconfig(component(test_images, "v2", fleet.port))
        fleet.update()
        fleet.wait_done()
        load.wait_for(lambda l: all(l.stats[t].versions["v2"] >= 3 for t in targets), 20)
    assert load.failed == 0, load.errors()
    assert load.versions()["v1"] > 0 and load.versions()["v2"] > 0
    assert sorted(fleet.acquired(2)) == ["h1", "h2", "h3"]
    assert rollout.max_overlap(fleet.store.events("web"), revision=2) == 1
    statuses = fleet.store.machines("web")
    assert {(m.status, m.image) for m in statuses} == {("ready", fleet.store.desired("web").image)}


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


def test_bad_image_halts_after_the_first_host_and_update_resumes(fleet, test_images):
    fleet.deploy_v1(test_images)
    fleet.setconfig(component(test_images, "never_ready", fleet.port))
    fleet.update()
    out = fleet.wait()
    assert out.returncode == 1, out.stderr
    desired = fleet.store.desired("web")
    assert desired.is_halted
    failed = desired.halted.machine
    assert f"rollout failed on {failed}" in out.stderr
    assert fleet.acquired(desired.revision) == [failed]  # nobody else tried
    def statuses():
        return {m.machine: m.status for m in fleet.store.machines("web")}
    wait_for(lambda: sorted(statuses().values()) == ["failed", "halted", "halted"], 30,
             f"the others to report the halt: {statuses()}")
    assert statuses()[failed] == "failed"
    assert {fleet.answers(h) for h in HOSTS} == {"v1"}  # everyone still serves v1
    assert "halted" in fleet.cli("list", fleet.project).stdout
    # The next update resumes the rollout.
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    fleet.wait_done()
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}


def test_kill9_of_the_slot_holder_mid_update_then_the_rollout_completes(
        fleet, test_images, docker_client):
    fleet.deploy_v1(test_images, drainTimeout=40)
    # Only h1 runs while the update starts, so h1 takes the slot; a slow request keeps its
    # old container draining so that it is killed in the middle of its update.
    fleet.terminate("h2")
    fleet.terminate("h3")
    slow: dict[str, tuple[bool, str]] = {}
    holder = threading.Thread(target=lambda: slow.setdefault(
        "r", loadgen.request(fleet.address("h1"), "/cgi-bin/slow?s=20", timeout=30)))
    holder.start()
    proxy = ProxyClient(fleet.host_env("h1")["GANTRY_PROXY_SOCKET"])
    wait_for(lambda: any(b.get("live") for r in proxy.routes()
                         for b in r.get("backends", ())), 10, "the slow request to be in flight")
    fleet.setconfig(component(test_images, "v2", fleet.port, drainTimeout=40))
    fleet.update()
    wait_for(lambda: fleet.answers("h1") == "v2", 30, "h1 to switch to v2")
    # Still draining, slot held.
    assert fleet.status("h1").status == "updating", f"{fleet.status('h1')}\n{fleet.logs()}"
    assert [h for _, h, _ in fleet.store.holders("web")] == ["h1"]
    fleet.kill9("h1")
    fleet.start("h2")
    fleet.start("h3")
    # h1's slot expires with its lease; h2 and h3 proceed.
    wait_for(lambda: not any(h == "h1" for _, h, _ in fleet.store.holders("web")), 30,
             "h1's slot to expire")
    fleet.wait_done()
    assert {fleet.answers(h) for h in ("h2", "h3")} == {"v2"}
    before = fleet.acquired(2)
    fleet.start("h1")  # recovers: finishes the drain, keeps the v2 container
    fleet.wait_done()
    assert fleet.acquired(2) == before  # no redeploy on h1
    holder.join(30)
    assert slow["r"] == (True, "v1")  # the draining request survived the crash
    wait_for(lambda: len(containers(docker_client, fleet.project, "h1")) == 1, 30,
             "h1's old container to be drained and removed")


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


def test_canary_is_left_alone_until_the_next_fleet_update(fleet, test_images, docker_client):
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
        host = Host(docker_client, ProxyClient(env["GANTRY_PROXY_SOCKET"]), fleet.project, "h1",
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
