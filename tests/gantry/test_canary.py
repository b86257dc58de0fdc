"""End-to-end: a weighted canary (gantry/canary.py) under load against real Docker, registry
and proxy: split, promote, abort, replace, and recovery keeping the split whole."""
from __future__ import annotations

import pytest
import rig
from gantry.canary import Canary, NoCanary
from gantry.config import parse_config
from gantry_helpers import (SlowRequest, backend_of, component_dict, make_component,
                            project_containers, route_of, target, variant, wait_for)
from loadgen import Load, sample

SAMPLE = 300


def _split(life, v1, v2, percent: int) -> tuple[str, str]:
    """v1 live (unless it is already), then a canary of v2 at ``percent``: (stable id,
    canary id)."""
    stable = life.current(v1) or life.update(v1).container
    canary = Canary(life).start(v2, percent).container
    return stable.id, canary.id


def _states(life, c) -> list[str]:
    return [s.display_state for s in life.status(c)]


def test_canary_split_then_promote_under_load(life, proxy, project, docker_client):
    v1 = make_component(tag="v1")
    v2 = variant(v1, tag="v2")
    life.update(v1)
    with Load([target(v1)], short_workers=2) as load:
        stable, canary = _split(life, v1, v2, 30)
        assert _states(life, v1) == ["running", "canary 30%"]
        answers = sample(target(v1), SAMPLE)
        assert set(answers) == {"v1", "v2"}, answers
        assert SAMPLE * 0.1 <= answers["v2"] <= SAMPLE * 0.5, answers
        assert route_of(proxy, project, v1)["backend"] in life.current(v1).backends

        deployment = Canary(life).promote(v2)
        assert deployment.replaced == (stable,)
        assert sample(target(v1), 50) == {"v2": 50}
    assert load.failed == 0, load.errors()
    assert load.versions()["v1"] and load.versions()["v2"]
    assert [c.id for c in project_containers(docker_client, project)] == [canary]
    assert _states(life, v1) == ["running"]
    with pytest.raises(NoCanary):
        Canary(life).promote(v2)


def test_canary_abort_under_load(life, project, docker_client):
    v1 = make_component(tag="v1")
    v2 = variant(v1, tag="v2")
    life.update(v1)
    with Load([target(v1)], short_workers=2) as load:
        stable, _ = _split(life, v1, v2, 30)
        assert load.wait_for(lambda run: run.versions()["v2"] >= 5, 10)
        Canary(life).abort(v2)
        assert sample(target(v1), 50) == {"v1": 50}
    assert load.failed == 0, load.errors()
    assert [c.id for c in project_containers(docker_client, project)] == [stable]
    with pytest.raises(NoCanary):
        Canary(life).abort(v1)


def test_canary_again_replaces_or_reweights(life, project, docker_client):
    """Same image and config: only the weights change; another image: a new canary."""
    v1 = make_component(tag="v1")
    v2, v3 = variant(v1, tag="v2"), variant(v1, tag="v3")
    stable, canary = _split(life, v1, v2, 30)
    assert Canary(life).start(v2, 60).container.id == canary
    assert _states(life, v1) == ["running", "canary 60%"]
    replaced = Canary(life).start(v3, 20)
    assert replaced.replaced == (canary,)
    ids = [c.id for c in life.status(v1)]
    assert ids == [stable, replaced.container.id]
    assert set(sample(target(v1), 50)) == {"v1", "v3"}


def test_failed_canary_changes_nothing(life, docker_client, project):
    v1 = make_component(tag="v1")
    stable = life.update(v1).container
    from gantry.errors import UpdateFailed
    with pytest.raises(UpdateFailed):
        Canary(life).start(variant(v1, tag="never-ready", readyTimeout=2), 30)
    assert [c.id for c in project_containers(docker_client, project)] == [stable.id]
    assert sample(target(v1), 20) == {"v1": 20}


def test_update_during_a_canary_replaces_both(life, docker_client, project):
    v1 = make_component(tag="v1")
    _split(life, v1, variant(v1, tag="v2"), 30)
    new = life.update(variant(v1, tag="v3")).container
    assert [c.id for c in project_containers(docker_client, project)] == [new.id]
    assert sample(target(v1), 20) == {"v3": 20}


def test_recover_keeps_a_whole_split_and_undoes_a_partial_one(life, proxy, project):
    data = make_component(tag="v1").to_dict()
    data["ports"].append({"external": rig.free_port(), "container": 8080, "kind": "tcp"})
    v1 = parse_config({"components": [data]}).components[0]
    v2 = variant(v1, tag="v2")
    stable, canary = _split(life, v1, v2, 50)
    life.recover(v1)
    assert [s.id for s in life.status(v1)] == [stable, canary]
    assert _states(life, v1) == ["running", "canary 50%"]

    # What a start or abort killed between the two route changes leaves: one route split.
    first = v1.ports[1]
    proxy.set_route(f"{project}.web.{first.external}", listen=f"127.0.0.1:{first.external}",
                    backend=life.current(v1).backends[0], kind=first.kind)
    life.recover(v1)
    assert [s.id for s in life.status(v1)] == [stable]
    routes = [r for r in proxy.routes() if r["name"].startswith(project + ".")]
    assert [len([b for b in r["backends"] if b.get("weight")]) for r in routes] == [1, 1]


def test_cli_canary_survives_kill_9(cli, docker_client, project):
    """`gantry update --canary`, then a canary replacement killed with -9 during its ready
    checks: the next command removes the half-made container and keeps the split whole."""
    web = component_dict(tag="v1", readyTimeout=60)
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    cli.write_config({**web, "tag": "v2"})
    split = cli.run("update", "web", "--canary", "30")
    assert split.returncode == 0, split.stdout + split.stderr
    cli.write_config({**web, "tag": "never-ready"})
    replacing = cli.spawn("update", "web", "--canary", "50")
    # Killed once the new container runs (its ready checks never pass): a container only
    # created would list as stopped, not starting.
    wait_for(lambda: [c.status for c in project_containers(docker_client, project)].count(
        "running") == 3, 30, "the new canary container to run")
    replacing.kill()
    replacing.wait(10)
    listed = cli.run("list")
    assert "canary 30%" in listed.stdout and "starting" in listed.stdout, listed.stdout
    cli.write_config(web)
    again = cli.run("start", "web")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "never routed" in again.stdout
    listed = cli.run("list")
    assert "canary 30%" in listed.stdout, listed.stdout
    assert len(project_containers(docker_client, project)) == 2
    c = parse_config({"components": [web]}).components[0]
    assert set(sample(target(c), 40)) == {"v1", "v2"}
    assert cli.run("promote", "web").returncode == 0
    assert sample(target(c), 20) == {"v2": 20}
    wrong = cli.run("abort", "web")
    assert wrong.returncode == 1 and "no canary" in wrong.stderr, wrong.stderr


@pytest.mark.parametrize("value", ["0", "100", "abc"])
def test_cli_bad_canary_percentage(cli, docker_client, project, value):
    cli.write_config(component_dict(tag="v1"))
    bad = cli.run("update", "web", "--canary", value)
    assert bad.returncode == 2 and "1-99" in bad.stderr, bad.stderr
    assert project_containers(docker_client, project) == []


def test_cli_promote_killed_mid_drain_is_finished(cli, docker_client, project, proxy):
    """kill -9 of `gantry promote` while the old container drains: the canary is the routes'
    primary by then, so the next command finishes the promote (it does not undo it)."""
    web = component_dict(tag="v1", drainTimeout=60)
    c = parse_config({"components": [web]}).components[0]
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    (stable,) = project_containers(docker_client, project)
    cli.write_config({**web, "tag": "v2"})
    assert cli.run("update", "web", "--canary", "50").returncode == 0
    (stable_backend,) = _backends(stable)

    def live() -> int:
        return sum(b["live"] for b in route_of(proxy, project, c)["backends"])

    # The split alternates between the two sides: send slow requests until the old side
    # holds one (the last one sent).
    slows: list[SlowRequest] = []
    while not backend_of(proxy, project, c, stable_backend)["live"]:
        assert len(slows) < 4, "the old container never got a slow request"
        before = live()
        slows.append(SlowRequest(target(c), 12))
        wait_for(lambda n=before: live() > n, 10, "the proxy to count the slow request")
    slow = slows[-1]
    promoting = cli.spawn("promote", "web")
    wait_for(lambda: "draining (1 connection)" in cli.run("list").stdout, 30,
             "the old container to drain")
    promoting.kill()
    promoting.wait(10)
    again = cli.run("list")
    assert "canary" not in again.stdout, again.stdout
    finish = cli.run("start", "web")
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert slow.wait(30) == (True, "v1")
    (left,) = project_containers(docker_client, project)
    assert left.id != stable.id
    assert sample(target(c), 10) == {"v2": 10}


def _backends(container) -> set[str]:
    return {f"127.0.0.1:{b[0]['HostPort']}" for b in container.ports.values() if b}
