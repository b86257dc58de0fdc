"""Listening sockets that outlive the proxy: the listener keeper's protocol, kill -9 and
SIGTERM under load (nothing refused), `gantry-proxy upgrade` under load (nothing failed),
route removal releasing the port, systemd socket activation and fd store."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from typing import Iterator

import loadgen
import pytest
from proxy_servers import (
    HttpServer,
    connect,
    free_port,
    held_connection,
    recv_all,
    refused,
    wait_for,
)

from proxy.address import Address
from proxy.client import ensure_running
from proxy.daemon import acquire_lock
from proxy.keeper import KeeperClient, KeeperError, ensure_keeper
from proxy.listeners import fd_name
from proxy.paths import keeper_socket_path, retiring_sockets
from proxy.upgrade import run_argv, run_options

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keeper(tmp_path) -> Iterator[KeeperClient]:
    client = ensure_keeper(str(tmp_path / "k" / "proxy.sock.listeners"))
    yield client
    client.stop()


@pytest.fixture
def web() -> Iterator[HttpServer]:
    server = HttpServer("web")
    yield server
    server.close()


def _listen() -> str:
    return f"127.0.0.1:{free_port()}"


def _target(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


# -- the keeper's protocol ------------------------------------------------------------------

def test_keeper_get_twice_gives_the_same_socket_and_release_closes_it(keeper):
    listen = _listen()
    first, second = keeper.get(listen, 16), keeper.get(listen, 16)
    with first, second:
        assert os.fstat(first.fileno()).st_ino == os.fstat(second.fileno()).st_ino
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert first.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        with connect(listen):  # completed by the kernel: nobody accepted yet
            second.accept()[0].close()
    assert keeper.listeners() == [listen]
    assert not refused(listen)  # our copies are closed: the keeper's listens on
    assert keeper.release(listen) is True
    assert refused(listen) and keeper.listeners() == []
    assert keeper.release(listen) is False
    assert stat.S_IMODE(os.stat(keeper.path).st_mode) == 0o600


def test_keeper_bind_conflict_is_a_clear_error(keeper):
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        busy = f"127.0.0.1:{squatter.getsockname()[1]}"
        with pytest.raises(KeeperError, match="Address already in use"):
            keeper.get(busy, 16)
    with pytest.raises(KeeperError, match="port must be"):
        keeper.get("127.0.0.1:0", 16)
    assert keeper.listeners() == []


def test_racing_starters_share_one_keeper_and_stop_frees_its_ports(tmp_path):
    path = str(tmp_path / "race.sock.listeners")
    pids: list[int] = []
    threads = [threading.Thread(target=lambda: pids.append(ensure_keeper(path).ping()["pid"]))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(pids) == 3 and len(set(pids)) == 1
    client = KeeperClient(path)
    listen = _listen()
    client.get(listen, 16).close()
    assert client.stop() is True
    assert refused(listen) and not os.path.exists(path)
    assert client.stop() is False


def test_keeper_whose_socket_file_is_removed_stops(tmp_path):
    path = str(tmp_path / "gone.sock.listeners")
    client = ensure_keeper(path)
    listen = _listen()
    client.get(listen, 16).close()
    os.unlink(path)  # e.g. its temp dir cleaned up: no proxy could reach it any more
    # Its lock (on PATH.lock, like a daemon's on STATE.lock) goes once it has stopped.
    wait_for(lambda: acquire_lock(path), 15, "the keeper to stop").close()
    assert refused(listen)


# -- the proxy with its keeper ----------------------------------------------------------------

def test_kill9_under_load_refuses_nothing_and_serves_the_queue(make_proxy, web):
    proxy = make_proxy()
    listen = _listen()
    proxy.client.set_route("web", listen, web.address, kind="http")
    target = _target(listen)
    restarted_pid = None
    with loadgen.Load([target], short_workers=3, timeout=30) as load:
        try:
            load.wait_for(lambda load: load.ended(target) >= 20, 20)
            before = load.ended(target)
            os.kill(proxy.pid, signal.SIGKILL)
            in_flight = load.in_flight_since(target, before)
            proxy.process.wait(10)
            # Opened while no proxy runs: it waits in the keeper's backlog.
            queued = connect(listen)
            queued.sendall(b"GET / HTTP/1.0\r\n\r\n")
            restarted = ensure_running(proxy.socket_path, proxy.state_path)  # as gantry does
            restarted_pid = restarted.ping()["pid"]
            with queued:
                assert recv_all(queued).endswith(b"web")
            back = load.ended(target)
            assert load.wait_for(lambda load: load.ended(target) >= back + 20, 20)
            load.stop()  # before the proxy goes: its requests must not count
        finally:
            if restarted_pid:
                os.kill(restarted_pid, signal.SIGKILL)
    print(f"kill -9 under load: {load.sent} requests, {load.failed} failed, "
          f"{load.refused} refused, {in_flight} in flight at the kill")
    assert load.refused == 0, load.errors()
    assert load.failed <= in_flight, load.errors()


def test_sigterm_keeps_the_listener_and_the_next_proxy_serves_the_queue(make_proxy, echo):
    proxy = make_proxy()
    listen = _listen()
    proxy.client.set_route("e", listen, echo.address)
    assert proxy.stop() == 0
    with connect(listen) as queued:
        queued.sendall(b"queued")
        queued.shutdown(socket.SHUT_WR)
        make_proxy()
        assert recv_all(queued) == b"queued"


def test_upgrade_under_load_fails_nothing(make_proxy, web, echo):
    proxy = make_proxy("--shutdown-timeout", "20")
    listen, tcp_listen = _listen(), _listen()
    proxy.client.set_route("web", listen, web.address, kind="http")
    proxy.client.set_route("echo", tcp_listen, echo.address)
    held = held_connection(tcp_listen)  # through the old process, open across the upgrade
    target = _target(listen)
    new_pid = None
    with loadgen.Load([target], short_workers=3, timeout=30) as load:
        try:
            load.wait_for(lambda load: load.ended(target) >= 20, 20)
            result = subprocess.run([sys.executable, "-m", "proxy", "upgrade", "--socket",
                                     proxy.socket_path], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr + proxy.log()
            ping = proxy.client.ping()
            new_pid = ping["pid"]
            assert f"pid {proxy.pid} -> {new_pid}" in result.stdout
            assert ping["options"]["shutdownTimeout"] == 20  # the old one's options
            after = load.ended(target)
            assert load.wait_for(lambda load: load.ended(target) >= after + 20, 20)
            assert proxy.process.poll() is None  # the old one finishes what it carries
            # A drain through the new daemon counts what the old one still carries (an
            # update right after an upgrade must not stop a backend under its feet).
            retiring = retiring_sockets(proxy.socket_path)
            assert retiring == [f"{proxy.socket_path}.retiring-{proxy.pid}"]
            assert proxy.client.drain("echo", echo.address, timeout=0.3) == \
                {"drained": False, "live": 1, "closed": 0}
            with held:
                held.sendall(b"still the old one")
                held.shutdown(socket.SHUT_WR)
                assert recv_all(held) == b"still the old one"
            assert proxy.process.wait(20) == 0
            assert retiring_sockets(proxy.socket_path) == []  # gone with the old process
            assert proxy.client.drain("echo", echo.address, timeout=1)["drained"] is True
            assert proxy.client.route("web")["backends"][0]["opened"] > 0  # the new one's
            load.stop()  # before the proxy goes: its requests must not count
        finally:
            if new_pid:
                os.kill(new_pid, signal.SIGKILL)
    print(f"upgrade under load: {load.sent} requests, {load.failed} failed, "
          f"{load.refused} refused")
    assert load.failed == 0 and load.refused == 0, load.errors()


def test_route_removal_and_rebind_release_the_port(proxy, echo):
    first, second = _listen(), _listen()
    proxy.client.set_route("r", first, echo.address)
    proxy.client.set_route("r", second, echo.address)  # re-bound: the first is released
    assert refused(first)
    proxy.client.remove_route("r")
    assert refused(second)
    socket.create_server(_target(second)).close()  # another process can bind it
    assert proxy.keeper.listeners() == []


# -- systemd ----------------------------------------------------------------------------------

def _notified(notify: socket.socket) -> tuple[str, list[int]]:
    data, fds, _, _ = socket.recv_fds(notify, 4096, 4)
    return data.decode(), fds


def test_systemd_sockets_are_adopted_and_new_ones_go_to_the_fd_store(make_proxy, echo,
                                                                     tmp_path):
    # What systemd would hold: a route's socket (the socket unit), the control socket and
    # the notification socket.
    route_sock = socket.create_server(("127.0.0.1", 0))
    listen = f"127.0.0.1:{route_sock.getsockname()[1]}"
    (tmp_path / "run").mkdir()
    control_path = str(tmp_path / "run" / "proxy.sock")
    control = socket.socket(socket.AF_UNIX)
    control.bind(control_path)
    control.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="web:control",
               NOTIFY_SOCKET=str(tmp_path / "notify"))
    fds = (route_sock.fileno(), control.fileno())
    # As systemd passes them: from fd 3 on, LISTEN_PID the proxy's own pid (set, then exec).
    wrapper = [sys.executable, "-c",
               f"import os, sys; os.dup2({fds[0]}, 3); os.dup2({fds[1]}, 4); "
               "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"]
    with route_sock, control, notify:
        proxy = make_proxy(prefix=wrapper, env=env, pass_fds=fds)
        assert proxy.client.ping()["options"]["listeners"] == "systemd"
        assert _notified(notify) == ("READY=1", [])
        # The test holds the socket too, so a fresh bind would fail: adopted.
        proxy.client.set_route("web", listen, echo.address)
        assert recv_all_after(listen, b"adopted") == b"adopted"

        fresh = _listen()
        proxy.client.set_route("fresh", fresh, echo.address)
        message, stored = _notified(notify)
        name = fd_name(Address("127.0.0.1", _target(fresh)[1]))
        assert message == f"FDSTORE=1\nFDNAME={name}" and ":" not in name
        with socket.socket(fileno=stored[0]) as kept:
            assert kept.getsockname() == _target(fresh)
            assert kept.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            proxy.client.remove_route("fresh")
            assert _notified(notify) == (f"FDSTOREREMOVE=1\nFDNAME={name}", [])
            with connect(fresh):  # the store's copy is the very socket the proxy listened on
                kept.accept()[0].close()
        assert proxy.stop() == 0
        assert os.path.exists(control_path)  # systemd's socket file: left in place
        assert not os.path.exists(keeper_socket_path(control_path))  # no keeper started


def recv_all_after(address: str, payload: bytes) -> bytes:
    with connect(address) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


# -- units ------------------------------------------------------------------------------------

def test_run_options_round_trip_to_a_command_line():
    options = run_options("/s.json", Address("127.0.0.1", 9100), None, 2.5, True, "keeper")
    assert run_argv(options) == ["--state", "/s.json", "--metrics", "127.0.0.1:9100",
                                 "--shutdown-timeout", "2.5", "--listeners", "keeper",
                                 "--verbose"]
    from proxy.cli import _parser
    args = _parser().parse_args(["run", *run_argv(options)])
    assert (args.state, args.metrics, args.shutdown_timeout, args.listeners, args.verbose) == \
        ("/s.json", "127.0.0.1:9100", 2.5, "keeper", True)
    upgrade = _parser().parse_args(["upgrade", "--shutdown-timeout", "3"])
    assert upgrade.shutdown_timeout == 3 and not hasattr(upgrade, "state")


def test_fd_names_have_no_colon():
    assert fd_name(Address("::1", 80)) == "listen-[__1]_80"
