"""Unit tests of the small modules (no Docker needed)."""
from __future__ import annotations

import http.server
import io
import socket
import threading
from types import SimpleNamespace

import pytest

from gantry import checks, labels
from gantry.cli import _uptime, sanitize_project
from gantry.errors import CheckFailed, LockBusy
from gantry.lock import ComponentLock
from gantry.progress import ConsoleReporter
from gantry.runtime import ContainerInfo, Runtime, short_ref


def test_sanitize_project():
    assert sanitize_project("My.App") == "my-app"
    assert sanitize_project("shop_1") == "shop_1"
    assert sanitize_project("...") == "default"


def test_uptime_and_image_formatting():
    assert _uptime(None) == "-"
    assert _uptime(42) == "42s"
    assert _uptime(3 * 3600 + 120) == "3h 2m"
    assert short_ref("r/app@sha256:" + "a" * 64) == "r/app@sha256:" + "a" * 12
    assert short_ref("r/app:v1") == "r/app:v1"


def test_labels_round_trip():
    lab = labels.GantryLabels("p", "web", "m1", "abc", "r@sha256:1", "gantry")
    assert labels.GantryLabels.from_dict(lab.to_dict()) == lab
    assert labels.selector("p", "m1", "web") == [
        "io.gantry.project=p", "io.gantry.machine=m1", "io.gantry.component=web"]


def test_lock_refuses_or_times_out_and_is_reentrant(tmp_path):
    holder = ComponentLock("p", "web", lock_dir=tmp_path, holder="pid 1 (test)")
    with holder:
        with holder:  # re-entrant within one object
            pass
        with pytest.raises(LockBusy, match=r"busy \(pid 1 \(test\)\)"):
            ComponentLock("p", "web", lock_dir=tmp_path, wait=False).acquire()
        with pytest.raises(LockBusy, match="still busy"):
            ComponentLock("p", "web", lock_dir=tmp_path, wait=0.2).acquire()
        ComponentLock("p", "api", lock_dir=tmp_path, wait=False).acquire()  # other component
    with ComponentLock("p", "web", lock_dir=tmp_path, wait=False):
        pass


def test_console_reporter_lines():
    out = io.StringIO()
    rep = ConsoleReporter(out)
    rep.step("hello")
    rep.draining("abcdef1234567890", 3, 10)
    rep.draining("abcdef1234567890", 3, 9)  # same count, soon after: not repeated
    rep.draining("abcdef1234567890", 2, 8)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("] hello") and lines[0].startswith("[")
    assert [line.split("] ", 1)[1] for line in lines[1:]] == [
        "draining abcdef123456: 3 live connection(s), 10s left",
        "draining abcdef123456: 2 live connection(s), 8s left"]


def test_container_info_from_inspect():
    info = ContainerInfo.from_attrs({
        "Id": "f" * 64, "Name": "/p.web.1", "Created": "2024-01-01T00:00:00.1Z",
        "Config": {"Labels": {"io.gantry.project": "p", "io.gantry.component": "web"}},
        "State": {"Status": "running", "ExitCode": 0, "StartedAt": "x",
                  "Health": {"Status": "healthy"}},
        "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
                                      "53/udp": None},
                            "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
    })
    assert info.running and info.health == "healthy" and info.ports == {8080: 32768}
    assert info.labels.component == "web" and info.name == "p.web.1"
    runtime = Runtime(client=None)
    assert runtime.backend(info, 8080) == "127.0.0.1:32768"
    assert runtime.backend(info, 9090) is None
    assert Runtime(client=None, backend_mode="container-ip").backend(info, 8080) == \
        "172.17.0.2:8080"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


class _FakeRuntime:
    """Maps container port 80 to a loopback port; the container is running."""

    backend_mode = "container-ip"  # plain tcp probes (no docker-proxy in front)

    def __init__(self, port: int, status: str = "running") -> None:
        self.port, self.status = port, status

    def address(self, info, container_port):
        return ("127.0.0.1", self.port)

    def inspect(self, container_id):
        return SimpleNamespace(running=self.status == "running", status=self.status,
                               exit_code=3, short_id=container_id[:12], health=None)

    def logs_tail(self, container_id):
        return "boom"


def _check(kind, path="/", interval=0.05):
    return SimpleNamespace(kind=kind, port=80, path=path, timeout=1, interval=interval)


def test_checks_http_tcp_and_docker(http_port):
    rt = _FakeRuntime(http_port)
    info = rt.inspect("c")
    checks.probe(_check("http", "/ok"), rt, info)
    checks.probe(_check("tcp"), rt, info)
    with pytest.raises(checks.ProbeFailed, match="answered 404"):
        checks.probe(_check("http", "/missing"), rt, info)
    with pytest.raises(checks.ProbeFailed) as no_healthcheck:
        checks.probe(_check("docker"), rt, info)
    assert no_healthcheck.value.final
    assert checks.check_once([_check("http", "/ok"), _check("http", "/x")], rt, "c") == \
        ["http :80/x: GET /x answered 404"]


def test_wait_for_checks_deadline_and_exit(http_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    rep = ConsoleReporter(io.StringIO())
    checks.wait_for_checks([_check("http", "/ok")], _FakeRuntime(http_port), "c", 2, rep)
    with pytest.raises(CheckFailed, match="did not pass within 0.3s"):
        checks.wait_for_checks([_check("tcp")], _FakeRuntime(closed), "c", 0.3, rep)
    with pytest.raises(checks.ContainerExited, match=r"exited \(code 3\).*boom"):
        checks.wait_for_checks([_check("tcp")], _FakeRuntime(closed, "exited"), "c", 5, rep)
