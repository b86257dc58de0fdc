"""Monitor: replace a container after consecutive failed health checks."""
from __future__ import annotations

import http.client
import threading

from gantry_helpers import make_component, project_containers, target, wait_for
from loadgen import Load, request


def _break(c) -> None:
    """POST /cgi-bin/break through the proxy: /health answers 404 from then on."""
    conn = http.client.HTTPConnection(*target(c), timeout=5)
    try:
        conn.request("POST", "/cgi-bin/break")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_monitor_replaces_an_unhealthy_container(life, docker_client, project):
    v1 = make_component(tag="v1")
    first = life.update(v1).container
    stop = threading.Event()
    monitor = threading.Thread(target=life.monitor, args=(v1, stop))
    monitor.start()
    try:
        wait_for(lambda: any("monitoring" in line for line in life.reporter.lines), 10,
                 "the monitor to start")
        with Load([target(v1)], short_workers=2) as load:
            _break(v1)
            replaced = wait_for(lambda: (cur := life.current(v1)) and cur.id != first.id and cur,
                                30, "a replacement")
            wait_for(lambda: [x.id for x in project_containers(docker_client, project)]
                     == [replaced.id], 20, "the broken container to go")
        assert load.failed == 0, load.errors()
        assert replaced.image == first.image  # same image, fresh container
        assert any("unhealthy (2/2)" in line for line in life.reporter.lines)
        assert request(target(v1), "/health")[0]
    finally:
        stop.set()
        monitor.join(30)
    assert not monitor.is_alive()


def test_monitor_ends_when_the_component_is_stopped(make_lifecycle):
    life = make_lifecycle()
    v1 = make_component(tag="v1")
    life.update(v1)
    monitor = threading.Thread(target=life.monitor, args=(v1,))
    monitor.start()
    wait_for(lambda: any("monitoring" in line for line in life.reporter.lines), 10,
             "the monitor to start")
    make_lifecycle().stop(v1)
    monitor.join(30)
    assert not monitor.is_alive()
    assert any("monitor ends" in line for line in life.reporter.lines)
