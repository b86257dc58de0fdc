"""Restart safety and signals: kill -9 + restore, error state at restore, SIGTERM drain,
ensure_running, a corrupt state file set aside, refusing a second daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from proxy.client import EX_ALREADY_RUNNING, ProxyClient, ensure_running
from proxy.keeper import KeeperClient
from proxy.paths import keeper_socket_path
from proxy_servers import connect, free_port, held_connection, recv_all, refused, wait_for

pytestmark = pytest.mark.timeout(60)


def _works(address: str, payload: bytes = b"ping") -> bool:
    try:
        with connect(address, timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return recv_all(s) == payload
    except OSError:
        return False


def test_kill9_restart_restores_routes(make_proxy, echo, tmp_path):
    proxy = make_proxy()
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("keep", listen, echo.address, kind="http", idle_timeout=5)
    assert _works(listen)
    proxy.kill()
    restarted = make_proxy()
    wait_for(lambda: _works(listen), timeout=1.0, what="route back within 1 s")
    route = restarted.client.route("keep")
    assert (route["listen"], route["backend"], route["kind"], route["idleTimeout"]) == \
        (listen, echo.address, "http", 5)


def test_restore_with_busy_port_reports_error_others_work(make_proxy, echo, tmp_path):
    proxy = make_proxy()
    good, contested = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proxy.client.set_route("good", good, echo.address)
    proxy.client.set_route("contested", contested, echo.address)
    proxy.stop()
    proxy.keeper.stop()  # it would keep both ports for the restart
    host, port = contested.rsplit(":", 1)
    squatter = socket.create_server((host, int(port)))
    try:
        restarted = make_proxy()
        route = restarted.client.route("contested")
        assert route["state"] == "error" and contested in route["error"]
        assert restarted.client.route("good")["state"] == "listening"
        assert _works(good)
    finally:
        squatter.close()
    # Once the port is free, PUT binds the errored route again.
    restarted.client.set_route("contested", contested, echo.address)
    assert restarted.client.route("contested")["state"] == "listening"
    assert _works(contested)


def test_sigterm_stops_accepting_and_drains(make_proxy, echo):
    # Direct listeners close with the process (a keeper's would queue new clients instead:
    # test_proxy_listeners.py).
    proxy = make_proxy("--shutdown-timeout", "30", "--listeners", "direct")
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("t", listen, echo.address)
    held = held_connection(listen)
    proxy.process.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(listen), what="listener closed")
    held.sendall(b"still served")  # the live connection keeps working while we drain
    held.shutdown(socket.SHUT_WR)
    assert recv_all(held) == b"still served"
    held.close()
    assert proxy.process.wait(20) == 0
    assert "all connections closed" in proxy.log()
    # The state survives a clean stop too.
    assert "t" in json.loads(open(proxy.state_path).read())["routes"]


def test_sigterm_timeout_closes_leftovers(make_proxy, echo):
    proxy = make_proxy("--shutdown-timeout", "0.3")
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("t", listen, echo.address)
    held = held_connection(listen)
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(20) == 0
    held.settimeout(10)
    try:
        assert held.recv(10) == b""
    except ConnectionResetError:
        pass
    held.close()
    assert "closed 1 connections" in proxy.log()


def test_ensure_running_starts_detached_daemon(tmp_path, echo):
    sock, state = str(tmp_path / "s" / "p.sock"), str(tmp_path / "st" / "state.json")
    client = ensure_running(sock, state, timeout=15)
    pid = client.ping()["pid"]
    try:
        assert ensure_running(sock, state).ping()["pid"] == pid  # already running: reused
        assert os.getsid(pid) == pid  # its own session: it outlives its starter
        assert os.path.exists(tmp_path / "st" / "gantry-proxy.log")
        listen = f"127.0.0.1:{free_port()}"
        client.set_route("e", listen, echo.address)
        assert _works(listen)
    finally:
        os.kill(pid, signal.SIGKILL)
        KeeperClient(keeper_socket_path(sock)).stop()


def test_corrupt_state_file_is_set_aside_and_clients_wait(make_proxy, echo, tmp_path):
    """A corrupt state file does not keep the proxy down: it is kept aside, the proxy starts
    with no routes, and a client of a lost route waits in the kept listener's backlog until
    the route is set again (as gantry does from the containers), instead of being refused."""
    proxy = make_proxy()
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("lost", listen, echo.address)
    assert _works(listen)
    proxy.kill()
    state = tmp_path / "state" / "proxy-state.json"
    state.write_text("{broken")
    restarted = make_proxy()
    assert restarted.client.routes() == []
    (aside,) = list(state.parent.glob("proxy-state.json.corrupt-*"))
    assert aside.read_text() == "{broken"  # kept for inspection, never overwritten
    assert "corrupt" in restarted.log() and "NO routes" in restarted.log()
    waiting = connect(listen, timeout=30)  # queued in the backlog: not refused
    try:
        waiting.sendall(b"queued")
        waiting.shutdown(socket.SHUT_WR)
        restarted.client.set_route("lost", listen, echo.address)
        assert recv_all(waiting) == b"queued"
    finally:
        waiting.close()
    assert _works(listen)
    assert json.loads(state.read_text())["routes"]["lost"]  # a sound file again


def test_second_daemon_on_same_state_exits(proxy):
    result = subprocess.run([sys.executable, "-m", "proxy", "run", "--socket",
                             proxy.socket_path + "2", "--state", proxy.state_path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == EX_ALREADY_RUNNING
    assert ProxyClient(proxy.socket_path).ping()["pid"] == proxy.pid
