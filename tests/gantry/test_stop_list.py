"""End-to-end: stop (drained), kill (at once), and the states `list` reports."""
from __future__ import annotations

import threading

from gantry_helpers import (live_by_backend, make_component, project_containers, route_of,
                            target, variant, wait_for)
from loadgen import request


def _slow_request(c, seconds: float, results: dict) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.update(slow=request(target(c), f"/cgi-bin/slow?s={seconds}")))
    thread.start()
    return thread


def test_stop_drains_then_removes(life, proxy, project, docker_client):
    v1 = make_component(tag="v1", drainTimeout=20)
    first = life.update(v1).container
    results: dict = {}
    slow = _slow_request(v1, 3, results)
    wait_for(lambda: sum(live_by_backend(proxy, project, v1).values()) == 1, 10,
             "the proxy to count the slow request")
    removed = life.stop(v1)
    slow.join(30)
    assert results["slow"] == (True, "v1")
    assert removed == [first.id]
    assert project_containers(docker_client, project) == []
    assert route_of(proxy, project, v1) is None
    assert request(target(v1), timeout=2)[0] is False  # nothing listens any more


def test_kill_removes_at_once(life, proxy, project, docker_client):
    v1 = make_component(tag="v1", drainTimeout=60)
    life.update(v1)
    results: dict = {}
    slow = _slow_request(v1, 60, results)
    wait_for(lambda: sum(live_by_backend(proxy, project, v1).values()) == 1, 10,
             "the proxy to count the slow request")
    life.stop(v1, kill=True)
    slow.join(30)
    assert results["slow"][0] is False  # cut, not waited for
    assert project_containers(docker_client, project) == []
    assert route_of(proxy, project, v1) is None


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
