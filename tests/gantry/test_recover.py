"""Robustness: a gantry killed at any moment (kill -9) is cleaned up by the next command."""
from __future__ import annotations

import threading

import rig
from gantry.config import parse_config
from gantry_helpers import (component_dict, live_by_backend, make_component,
                            project_containers, route_of, target, variant, wait_for)
from loadgen import Load, request


def _component(data):
    return parse_config({"components": [data]}).components[0]


def test_kill_9_during_ready_checks(cli, docker_client, project, proxy):
    web = component_dict(tag="v1", readyTimeout=60)
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    (first,) = project_containers(docker_client, project)
    c = _component(web)
    with Load([target(c)], short_workers=2) as load:
        cli.write_config({**web, "tag": "never-ready"})
        updating = cli.spawn("update", "web")
        # Started, not only created: killed in between, it would be a stopped container
        # (cleaned up too, but by another path than the one this test is about).
        wait_for(lambda: [c.status for c in project_containers(docker_client, project)]
                 == ["running", "running"], 30, "the new container running")
        updating.kill()  # SIGKILL: no cleanup of any kind
        updating.wait(10)
        assert len(project_containers(docker_client, project)) == 2  # left behind

        cli.write_config(web)
        again = cli.run("start", "web")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "never routed" in again.stdout
    assert load.failed == 0, load.errors()
    assert [x.id for x in project_containers(docker_client, project)] == [first.id]
    assert route_of(proxy, project, c)["backend"].startswith("127.0.0.1:")
    assert request(target(c)) == (True, "v1")


def test_sigterm_during_ready_checks_removes_the_new_container(cli, docker_client, project):
    web = component_dict(tag="v1", readyTimeout=60)
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    (first,) = project_containers(docker_client, project)
    cli.write_config({**web, "tag": "never-ready"})
    updating = cli.spawn("update", "web")
    wait_for(lambda: len(project_containers(docker_client, project)) == 2, 30,
             "the new container")
    updating.terminate()
    out = updating.communicate(timeout=30)[0]
    assert updating.returncode == 130, out
    assert [x.id for x in project_containers(docker_client, project)] == [first.id]


def test_kill_9_during_drain(cli, docker_client, project, proxy):
    web = component_dict(tag="v1", drainTimeout=60)
    c = _component(web)
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    (first,) = project_containers(docker_client, project)
    results: dict = {}
    slow = threading.Thread(
        target=lambda: results.update(slow=request(target(c), "/cgi-bin/slow?s=12")))
    slow.start()
    wait_for(lambda: sum(live_by_backend(proxy, project, c).values()) == 1, 10, "slow request")

    cli.write_config({**web, "tag": "v2"})
    updating = cli.spawn("update", "web")

    def draining():
        table = cli.run("list").stdout
        return "draining (1 connection)" in table and table

    table = wait_for(draining, 30, "the old container to drain")
    assert first.short_id in table and "running" in table
    updating.kill()  # mid-drain (the proxy counted the slow request a moment ago)
    updating.wait(10)

    # Any next command finishes the job: here a start of the same config.
    again = cli.run("start", "web")
    assert again.returncode == 0, again.stdout + again.stderr
    slow.join(30)
    assert results["slow"] == (True, "v1")
    (left,) = project_containers(docker_client, project)
    assert left.id != first.id
    assert request(target(c)) == (True, "v2")
    assert route_of(proxy, project, c)["backend"] in {
        f"127.0.0.1:{b[0]['HostPort']}" for b in left.ports.values() if b}


def test_recover_removes_stopped_and_spares_foreign(life, docker_client, project, test_images):
    v1 = make_component(tag="v1")
    first = life.update(v1).container
    docker_client.containers.get(first.id).stop(timeout=1)
    other_machine = docker_client.containers.create(
        test_images["v1"], labels={"io.gantry.project": project, "io.gantry.component": "web",
                                   "io.gantry.machine": "elsewhere"})
    unlabelled = docker_client.containers.create(test_images["v1"])
    try:
        life.recover(v1)
        ids = {x.id for x in project_containers(docker_client, project)}
        assert ids == {other_machine.id}
        docker_client.containers.get(unlabelled.id)  # still there
        deployed = life.start(v1)
        assert deployed.changed and request(target(v1)) == (True, "v1")
    finally:
        unlabelled.remove(force=True)


def test_crash_between_two_route_switches(life, proxy, project, docker_client):
    """Killed after switching one of two ports: recover points both at the new container and
    drains the old one."""
    data = make_component(tag="v1").to_dict()
    data["ports"].append({"external": rig.free_port(), "container": 8080, "kind": "tcp"})
    two_ports = parse_config({"components": [data]}).components[0]
    old = life.update(two_ports).container
    # What a killed update leaves: a new, ready container with only the first route switched.
    new_id = life._create(two_ports, old.image)
    new = life.runtime.inspect(new_id)
    wait_for(lambda: request(("127.0.0.1", new.ports[8080]))[0], 10, "the new container")
    first = two_ports.ports[0]
    proxy.set_route(f"{project}.web.{first.external}", listen=f"127.0.0.1:{first.external}",
                    backend=life.runtime.backend(new, 8080), kind=first.kind)
    assert {s.state for s in life.status(two_ports)} == {"running"}  # both routed

    life.recover(two_ports)
    assert life.current(two_ports).id == new_id
    routes = [r for r in proxy.routes() if r["name"].startswith(project + ".")]
    assert len(routes) == 2
    assert {r["backend"] for r in routes} == {life.runtime.backend(new, 8080)}
    assert [x.id for x in project_containers(docker_client, project)] == [new_id]


def test_a_container_the_engine_restarted_is_routed_again(life, docker_client, project, proxy):
    """A live container gets the restart policy; when the engine restarts it (here: stop and
    start by hand) its published port may change, and recover() re-points the routes at it
    instead of replacing it."""
    c = make_component(tag="v1")
    life.update(c)
    (live,) = project_containers(docker_client, project)
    assert live.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    live.stop(timeout=1)
    live.start()
    live.reload()
    port = live.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    life.recover(c)
    assert [x.id for x in project_containers(docker_client, project)] == [live.id]
    assert route_of(proxy, project, c)["backend"] == f"127.0.0.1:{port}"
    assert request(target(c)) == (True, "v1")


def test_a_crashing_new_version_is_not_restarted_by_the_engine(life, docker_client, project):
    """The restart policy comes only once a container is live: a new version that crashes
    during its ready checks fails the update (it is not restarted in a loop) and is removed."""
    import pytest
    from gantry.errors import UpdateFailed
    c = make_component(tag="v1")
    life.update(c)
    with pytest.raises(UpdateFailed, match="exited"):
        life.update(variant(c, tag="crash"))
    (live,) = project_containers(docker_client, project)
    assert live.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert request(target(c)) == (True, "v1")


def test_an_interrupt_after_the_switch_leaves_the_new_container_serving(life, docker_client,
                                                                        project, monkeypatch):
    """Ctrl-C (or the SIGTERM of `gantry watch`) once the routes point at the new container:
    it must stay (removing it would leave the routes on nothing); the next command finishes."""
    v1 = make_component(tag="v1")
    first = life.update(v1).container

    def interrupted(container_id: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(life, "_keep_up", interrupted)
    try:
        life.update(variant(v1, tag="v2"))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the injected interrupt did not reach the update")
    assert request(target(v1)) == (True, "v2")
    monkeypatch.undo()
    life.recover(v1)  # the old one is drained and removed
    (only,) = project_containers(docker_client, project)
    assert only.id != first.id and request(target(v1)) == (True, "v2")
