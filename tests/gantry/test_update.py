"""End-to-end: update, start and their failure paths against real Docker, registry and proxy."""
from __future__ import annotations

import docker.errors
import pytest
import rig
from gantry_helpers import (
    Background,
    RecordingReporter,
    backend_of,
    deploy_and_hold,
    forget_local_images,
    make_component,
    project_containers,
    route_of,
    target,
    variant,
    wait_for,
)
from loadgen import Load, request

from gantry.errors import UpdateFailed


def test_update_under_load_has_no_failed_request(life, proxy, project, docker_client):
    v1 = make_component(tag="v1")
    first = life.update(v1).container
    with Load([target(v1)], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        deployment = life.update(variant(v1, tag="v2"))
        assert load.wait_for(lambda ld: ld.versions()["v2"] >= 5, 10)
    assert load.failed == 0, load.errors()
    assert load.versions()["v1"] and load.versions()["v2"]
    assert deployment.replaced == (first.id,)

    (container,) = project_containers(docker_client, project)
    assert container.id == deployment.container.id
    labels = container.labels
    assert labels["io.gantry.component"] == "web"
    assert labels["io.gantry.origin"] == "gantry"
    assert labels["io.gantry.config-hash"] == v1.spec_hash()
    assert labels["io.gantry.image"].startswith(rig.TEST_REPO + "@sha256:")
    assert container.name.startswith(f"{project}.web.")
    current = life.current(v1)
    assert current.id == container.id and current.state == "running" and current.routed
    assert route_of(proxy, project, v1)["backend"] in current.backends


def test_slow_request_completes_on_the_old_container(make_lifecycle, proxy, project,
                                                     docker_client):
    """A slow request that started on v1 completes on v1 while new requests go to v2; v1 is
    removed only after it. Deterministic: every observation is made while the request is
    provably still in flight (10 s, far above the few seconds a switch takes)."""
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    v1 = make_component(tag="v1", drainTimeout=30)
    first, old_backend, slow = deploy_and_hold(life, proxy, project, v1)
    update = Background(lambda: life.update(variant(v1, tag="v2")), "update")
    wait_for(lambda: request(target(v1))[1] == "v2", 15, "new requests to reach v2")

    # While the slow request is in flight: v1 still runs, draining its one connection, and
    # the update waits for it.
    assert docker_client.containers.get(first.id).status == "running"
    route = route_of(proxy, project, v1)
    assert route["backend"] != old_backend
    old = backend_of(proxy, project, v1, old_backend)
    assert old and (old["state"], old["live"]) == ("draining", 1), route
    (draining,) = [s for s in life.status(v1) if s.id == first.id]
    assert draining.state == "draining" and draining.live == 1
    assert update.running()
    slow.assert_in_flight("the drain was observed")

    assert slow.wait(30) == (True, "v1")
    deployment = update.wait(30)
    assert deployment.replaced == (first.id,)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)
    assert [c.id for c in project_containers(docker_client, project)] == \
        [deployment.container.id]
    assert backend_of(proxy, project, v1, old_backend) is None
    assert request(target(v1)) == (True, "v2")
    # v1 was removed after its drain ended, not at the drain timeout.
    assert not any("drain timeout" in line for line in reporter.lines), reporter.lines


FAILURES = {
    "never_ready": ({"tag": "never-ready", "readyTimeout": 2}, "did not pass within"),
    "crash": ({"tag": "crash"}, "exited (code 3)"),
    "missing_tag": ({"tag": "no-such-tag"}, "cannot resolve"),
    "registry_unreachable": ({"repo": "localhost:5999/nope"}, "cannot resolve"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_update_keeps_the_old_container_serving(case, life, proxy, project,
                                                       docker_client):
    v1 = make_component(tag="v1")
    first = life.update(v1).container
    changes, message = FAILURES[case]
    with Load([target(v1)], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 3, 10)
        with pytest.raises(UpdateFailed) as failure:
            life.update(variant(v1, **changes))
        sent_before = load.sent
        assert load.wait_for(lambda ld: ld.sent >= sent_before + 3, 10)
    assert message in str(failure.value)
    assert f"{first.short_id} keeps serving" in str(failure.value)
    assert load.failed == 0, load.errors()
    assert set(load.versions()) == {"v1"}
    assert [c.id for c in project_containers(docker_client, project)] == [first.id]
    assert route_of(proxy, project, v1)["backend"] in first.backends


def test_start_is_a_no_op_when_up_to_date(life, docker_client, project):
    v1 = make_component(tag="v1")
    first = life.start(v1)
    assert first.changed
    again = life.start(v1)
    assert not again.changed and again.container.id == first.container.id
    # A config change (environment) makes start roll out a new container.
    changed = life.start(variant(v1, environmentVariables=[{"name": "X", "value": "1"}]))
    assert changed.changed and changed.container.id != first.container.id
    assert [c.id for c in project_containers(docker_client, project)] == [changed.container.id]


def test_pinned_image_is_used_as_given(life, docker_client):
    v1 = make_component(tag="v1")
    pinned = life.runtime.resolve(rig.TEST_REPO, "v2")
    deployment = life.update(v1, image=pinned)
    assert deployment.image == pinned
    assert request(target(v1)) == (True, "v2")


def test_two_components_side_by_side(make_lifecycle, proxy, project, docker_client):
    life = make_lifecycle()
    web = make_component(name="web", tag="v1")
    api = make_component(name="api", tag="v2")
    life.update(web)
    life.update(api)
    assert request(target(web)) == (True, "v1")
    assert request(target(api)) == (True, "v2")
    assert sorted(life.status_all()) == ["api", "web"]
    life.update(variant(web, tag="v3"))
    assert request(target(web)) == (True, "v3")
    assert request(target(api)) == (True, "v2")
    life.stop(web)
    assert route_of(proxy, project, web) is None
    assert request(target(api)) == (True, "v2")
    assert [c.labels["io.gantry.component"] for c in project_containers(docker_client, project)] \
        == ["api"]


def test_update_pulls_the_resolved_digest(make_lifecycle, private_repo, docker_client):
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    ref = rig.build_image("v2", repo=private_repo, tag="v2")
    forget_local_images(docker_client, private_repo)  # as on a host that never had it
    digest = docker_client.images.get_registry_data(ref).id
    assert digest.startswith("sha256:")

    c = make_component(repo=private_repo, tag="v2")
    deployment = life.update(c)
    pinned = f"{private_repo}@{digest}"
    assert deployment.image == pinned
    assert f"web: pulled {pinned}" in reporter.lines, reporter.lines
    container = docker_client.containers.get(deployment.container.id)
    assert container.labels["io.gantry.image"] == pinned
    assert container.attrs["Config"]["Image"] == pinned
    assert request(target(c)) == (True, "v2")

    # The tag moves in the registry (pushed from elsewhere): the next update resolves and
    # pulls the new digest.
    rig.build_image("v3", repo=private_repo, tag="v2")
    forget_local_images(docker_client, private_repo)
    moved = docker_client.images.get_registry_data(ref).id
    assert moved != digest
    reporter.lines.clear()
    again = life.update(c)
    pinned_moved = f"{private_repo}@{moved}"
    assert again.image == pinned_moved
    assert f"web: pulled {pinned_moved}" in reporter.lines, reporter.lines
    assert again.replaced == (deployment.container.id,)
    container = docker_client.containers.get(again.container.id)
    assert container.labels["io.gantry.image"] == pinned_moved
    assert container.attrs["Config"]["Image"] == pinned_moved
    assert request(target(c)) == (True, "v3")
