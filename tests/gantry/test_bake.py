"""Bake time (rollout.minHealthy) on one host: the old container stays until the new one
stayed healthy that long; a new one that turns unhealthy meanwhile is switched away from."""
from __future__ import annotations

import pytest
from gantry_helpers import (Background, RecordingReporter, make_component, project_containers,
                            route_of, target, variant, wait_for)
from loadgen import Load, request

from gantry.errors import UpdateFailed


def test_good_bake_keeps_the_old_container_until_it_ends(make_lifecycle, proxy, project,
                                                         docker_client):
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    v1 = make_component(tag="v1", rollout={"minHealthy": 4})
    first = life.update(v1).container
    assert any("no bake" in line for line in reporter.lines)  # nothing to go back to
    update = Background(lambda: life.update(variant(v1, tag="v2")), "update")
    wait_for(lambda: any("baking" in line for line in reporter.lines), 15, "the bake")
    # The new container serves; the old one still runs (drained, not routed).
    assert request(target(v1))[1] == "v2"
    running = {c.id for c in project_containers(docker_client, project)
               if c.status == "running"}
    assert first.id in running and len(running) == 2
    assert update.running(), "the bake ended before the test looked (machine too slow?)"
    deployment = update.wait(30)
    assert deployment.replaced == (first.id,)
    assert [c.id for c in project_containers(docker_client, project)] == [deployment.container.id]
    assert any("stayed healthy for 4s" in line for line in reporter.lines)


def test_failed_bake_switches_back_under_load(make_lifecycle, proxy, project, docker_client):
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    v1 = make_component(tag="v1", rollout={"minHealthy": 30})
    first = life.update(v1).container
    with Load([target(v1)], short_workers=2, slow_workers=1, slow_seconds=1) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        with pytest.raises(UpdateFailed, match="bake: .* unhealthy"):
            life.update(variant(v1, tag="sickly"))  # /health fails 3 s after its start
        # Back on v1 the moment the update returns: the route, and the answers.
        assert route_of(proxy, project, v1)["backend"] in first.backends
        assert request(target(v1))[1] == "v1"
        load.wait_for(lambda ld: ld.versions()["v1"] >= 20, 10)
    assert load.failed == 0, load.errors()
    assert load.versions()["sickly"] > 0  # it did serve during its bake
    assert [c.id for c in project_containers(docker_client, project)] == [first.id]
    assert any("routes back on the old container" in line for line in reporter.lines)
