"""End-to-end: stop (drained), kill (at once), and the states `list` reports."""
from __future__ import annotations

import threading

import docker.errors
import pytest
from gantry_helpers import (
    Background,
    RecordingReporter,
    SlowRequest,
    backend_of,
    deploy_and_hold,
    live_by_backend,
    make_component,
    project_containers,
    route_of,
    target,
    variant,
    wait_for,
)
from loadgen import request

from gantry.lifecycle import PARK_BACKEND


def _slow_request(c, seconds: float, results: dict) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.update(slow=request(target(c), f"/cgi-bin/slow?s={seconds}")))
    thread.start()
    return thread


def test_stop_drains_then_removes(make_lifecycle, proxy, project, docker_client):
    """stop waits for an in-flight request (observed while it is provably in flight), then
    removes the container and the routes."""
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    v1 = make_component(tag="v1", drainTimeout=30)
    first, backend, slow = deploy_and_hold(life, proxy, project, v1)
    slow.assert_in_flight("the stop began")
    stop = Background(lambda: life.stop(v1), "stop")
    wait_for(lambda: f"web: draining {first.short_id} (up to 30s)" in reporter.lines, 15,
             "the stop to start draining")

    # While the slow request is in flight: the container still runs, the route is parked
    # (new connections are turned away), the proxy still counts the live one.
    assert docker_client.containers.get(first.id).status == "running"
    route = route_of(proxy, project, v1)
    assert route["backend"] == PARK_BACKEND, route
    old = backend_of(proxy, project, v1, backend)
    assert old and (old["state"], old["live"]) == ("draining", 1), route
    assert request(target(v1), timeout=5)[0] is False
    assert stop.running()
    slow.assert_in_flight("the drain was observed")

    assert slow.wait(30) == (True, "v1")
    assert stop.wait(30) == [first.id]
    assert project_containers(docker_client, project) == []
    assert route_of(proxy, project, v1) is None
    assert request(target(v1), timeout=2)[0] is False  # nothing listens any more
    assert not any("drain timeout" in line for line in reporter.lines), reporter.lines


def test_kill_removes_at_once(make_lifecycle, proxy, project, docker_client):
    """kill does not wait: the container goes while a 60 s request is in flight (with a 60 s
    drain timeout), and that request is cut."""
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    v1 = make_component(tag="v1", drainTimeout=60)
    first = life.update(v1).container
    slow = SlowRequest(target(v1), 60)
    wait_for(lambda: sum(live_by_backend(proxy, project, v1).values()) == 1, 10,
             "the proxy to count the slow request")
    slow.assert_in_flight("the kill began")
    # A kill that waited would need the 60 s drain (or the request's 60 s); it gets 20.
    assert Background(lambda: life.stop(v1, kill=True), "kill").wait(20) == [first.id]
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)
    ok, why = slow.wait(20)
    assert ok is False, why  # cut, not waited for
    assert project_containers(docker_client, project) == []
    assert route_of(proxy, project, v1) is None
    assert not any("draining" in line for line in reporter.lines), reporter.lines


def test_stop_without_containers_is_fine(life):
    assert life.stop(make_component(tag="v1")) == []


def test_status_states(make_lifecycle, proxy, project, docker_client):
    life = make_lifecycle()
    v1 = make_component(tag="v1", drainTimeout=30, readyTimeout=30)
    first = life.update(v1).container
    assert [s.state for s in life.status(v1)] == ["running"]

    # starting: a new container waiting for its ready checks (never_ready).
    updater = make_lifecycle()
    failed: dict = {}
    thread = threading.Thread(target=lambda: _capture(
        failed, lambda: updater.update(variant(v1, tag="never-ready", readyTimeout=30))))
    thread.start()
    states = wait_for(lambda: [s.state for s in life.status(v1)] == ["running", "starting"]
                      and life.status(v1), 15, "a starting container")
    assert states[0].id == first.id
    docker_client.containers.get(states[1].id).kill()  # ends the update at once
    thread.join(30)
    assert "exited" in str(failed["error"])

    # draining (1 connection): the old container while a slow request is in flight.
    results: dict = {}
    slow = _slow_request(v1, 4, results)
    wait_for(lambda: sum(live_by_backend(proxy, project, v1).values()) == 1, 10, "slow request")
    thread = threading.Thread(target=lambda: updater.update(variant(v1, tag="v2")))
    thread.start()
    draining = wait_for(lambda: [s for s in life.status(v1) if s.state == "draining"], 15,
                        "a draining container")
    assert draining[0].id == first.id and draining[0].live == 1
    assert draining[0].display_state == "draining (1 connection)"
    slow.join(30)
    thread.join(30)
    assert results["slow"] == (True, "v1")

    # stopped: the live container exited on its own.
    (live,) = life.status(v1)
    docker_client.containers.get(live.id).stop(timeout=1)
    assert [s.state for s in life.status(v1)] == ["stopped"]
    assert life.current(v1) is None


def _capture(out: dict, fn) -> None:
    try:
        out["result"] = fn()
    except Exception as exc:  # handed to the test thread
        out["error"] = exc
