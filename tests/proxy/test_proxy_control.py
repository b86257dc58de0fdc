"""The control API over the unix socket: errors, re-bind, remove, permissions, CLI, metrics."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import requests

from proxy.client import ProxyClient, ProxyError, ProxyNotRunning, _UnixConnection
from proxy_servers import connect, free_port, recv_all, refused, wait_for

pytestmark = pytest.mark.timeout(60)


def _status(fn) -> tuple[int, str]:
    with pytest.raises(ProxyError) as info:
        fn()
    return info.value.status, str(info.value)


def test_unknown_route_404(proxy):
    c = proxy.client
    assert _status(lambda: c.remove_route("nope"))[0] == 404
    assert _status(lambda: c.drain("nope", "127.0.0.1:1", 1))[0] == 404
    assert _status(lambda: c.route("nope"))[0] == 404


@pytest.mark.parametrize("listen,backend,kind,fragment", [
    ("127.0.0.1:80x", "127.0.0.1:1", "tcp", "port"),
    ("127.0.0.1:8080", "example.com:80", "tcp", "not an IP"),
    ("127.0.0.1:8080", "127.0.0.1", "tcp", "no port"),
    ("127.0.0.1:8080", "127.0.0.1:70000", "tcp", "port"),
    ("127.0.0.1:8080", "127.0.0.1:1", "udp", "bad kind"),
])
def test_bad_input_400(proxy, listen, backend, kind, fragment):
    status, message = _status(lambda: proxy.client.set_route("x", listen, backend, kind=kind))
    assert status == 400 and fragment in message
    assert proxy.client.routes() == []


def _raw(proxy, method: str, path: str, body: bytes) -> tuple[int, dict]:
    conn = _UnixConnection(proxy.socket_path, 10)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_bad_json_and_unknown_keys_400(proxy):
    status, answer = _raw(proxy, "PUT", "/routes/x", b"{not json")
    assert status == 400 and "JSON" in answer["error"]
    status, answer = _raw(proxy, "PUT", "/routes/x",
                          b'{"listen": "127.0.0.1:1", "backend": "127.0.0.1:2", "bakend": 1}')
    assert status == 400 and "bakend" in answer["error"]
    status, answer = _raw(proxy, "POST", "/routes/x/drain", b"[]")
    assert status in (400, 404)
    assert _raw(proxy, "GET", "/nothing", b"")[0] == 404


def test_port_in_use_409_route_not_created_and_old_listen_stays(proxy, echo):
    busy = socket.create_server(("127.0.0.1", 0))
    busy_addr = f"127.0.0.1:{busy.getsockname()[1]}"
    try:
        status, message = _status(lambda: proxy.client.set_route("p", busy_addr, echo.address))
        assert status == 409 and busy_addr in message
        assert proxy.client.routes() == []
        listen = f"127.0.0.1:{free_port()}"
        proxy.client.set_route("p", listen, echo.address)
        assert _status(lambda: proxy.client.set_route("p", busy_addr, echo.address))[0] == 409
        assert proxy.client.route("p")["listen"] == listen
        with connect(listen) as s:
            s.sendall(b"ok")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"ok"
    finally:
        busy.close()


def test_rebind_and_remove(proxy, echo):
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proxy.client.set_route("m", first, echo.address)
    held = connect(first)
    answer = proxy.client.set_route("m", second, echo.address)
    assert answer["previous"] == echo.address and answer["route"]["listen"] == second
    assert refused(first)
    connect(second).close()
    assert proxy.client.remove_route("m") == {"previous": echo.address}
    assert refused(second)
    held.sendall(b"live on")  # connections outlive their route
    held.shutdown(socket.SHUT_WR)
    assert recv_all(held) == b"live on"
    held.close()
    assert proxy.client.routes() == []
    # Same port, other interface address: collides with our own socket, handled by re-binding.
    port = free_port()
    proxy.client.set_route("m", f"127.0.0.1:{port}", echo.address)
    proxy.client.set_route("m", f"0.0.0.0:{port}", echo.address)
    connect(f"127.0.0.1:{port}").close()
    assert proxy.client.route("m")["listen"] == f"0.0.0.0:{port}"


def test_socket_permissions(proxy):
    mode = os.stat(proxy.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(proxy.socket_path)).st_mode) == 0o700


def test_not_running_names_socket(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(ProxyNotRunning, match="none.sock"):
        ProxyClient(path).routes()


def test_status_cli(proxy, echo):
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("web.app.80", listen, echo.address, kind="http", idle_timeout=2)
    cli = [sys.executable, "-m", "proxy", "status", "--socket", proxy.socket_path]
    text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "ROUTE" in text and "BYTES IN/OUT" in text
    assert "web.app.80" in text and echo.address in text and "active" in text
    data = json.loads(subprocess.run(cli + ["--json"], capture_output=True, text=True,
                                     check=True).stdout)
    assert data[0]["name"] == "web.app.80" and data[0]["idleTimeout"] == 2
    bad = subprocess.run([sys.executable, "-m", "proxy", "status", "--socket",
                          proxy.socket_path + ".x"], capture_output=True, text=True)
    assert bad.returncode == 1 and "not running" in bad.stderr


def test_metrics(make_proxy, echo):
    address = f"127.0.0.1:{free_port()}"
    proxy = make_proxy("--metrics", address)
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("m", listen, echo.address)
    with connect(listen) as s:
        s.sendall(b"abc")
        s.shutdown(socket.SHUT_WR)
        recv_all(s)
    wait_for(lambda: proxy.client.route("m")["backends"][0]["closed"] == 1)
    text = requests.get(f"http://{address}/metrics", timeout=10).text
    labels = f'backend="{echo.address}",route="m"'
    assert f"gantry_proxy_backend_connections_total{{{labels}}} 1.0" in text
    assert f"gantry_proxy_backend_connections_live{{{labels}}} 0.0" in text
    assert (f'gantry_proxy_backend_bytes_total{{backend="{echo.address}",direction="out",'
            f'route="m"}} 3.0') in text
    assert 'gantry_proxy_route_bytes_total{direction="in",route="m"} 3.0' in text
    assert 'gantry_proxy_drains_total{result="completed",route="m"}' in text
