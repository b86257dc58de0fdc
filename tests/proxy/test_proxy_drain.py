"""Drain: wait, timeout, force-close, idle-close."""

from __future__ import annotations

import socket
import threading

import pytest

from proxy_servers import connect, free_port, wait_for

pytestmark = pytest.mark.timeout(60)


def _setup(proxy, a, kind="tcp", idle=None):
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("d", listen, a.address, kind=kind, idle_timeout=idle)
    return listen


def test_drain_waits_then_completes(proxy, echo_pair):
    a, b = echo_pair
    listen = _setup(proxy, a)
    held = connect(listen)
    assert held.recv(1) == b"A"
    proxy.client.set_route("d", listen, b.address)
    states = {x["address"]: x["state"] for x in proxy.client.route("d")["backends"]}
    assert states == {a.address: "draining", b.address: "active"}
    assert proxy.client.drain("d", a.address, timeout=0.2) == \
        {"drained": False, "live": 1, "closed": 0}

    result: list[dict] = []
    waiter = threading.Thread(
        target=lambda: result.append(proxy.client.drain("d", a.address, timeout=30)))
    waiter.start()
    held.sendall(b"bye")
    held.shutdown(socket.SHUT_WR)
    assert held.recv(10) == b"bye"  # the old backend still serves it
    held.close()
    waiter.join(30)
    assert result == [{"drained": True, "live": 0, "closed": 0}]
    # A drained backend is forgotten; draining it again is trivially done.
    assert [x["address"] for x in proxy.client.route("d")["backends"]] == [b.address]
    assert proxy.client.drain("d", a.address, timeout=1)["drained"] is True


def test_drain_timeout_force_close(proxy, echo_pair):
    a, b = echo_pair
    listen = _setup(proxy, a)
    held = [connect(listen) for _ in range(3)]
    for s in held:
        assert s.recv(1) == b"A"
    proxy.client.set_route("d", listen, b.address)
    assert proxy.client.drain("d", a.address, timeout=0.2, close=True) == \
        {"drained": False, "live": 0, "closed": 3}
    for s in held:
        s.settimeout(10)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    wait_for(lambda: a.open == 0, what="backend side closed too")


def test_idle_close_on_http_route(proxy, echo_pair):
    a, b = echo_pair
    listen = _setup(proxy, a, kind="http", idle=0.3)
    idle = connect(listen)
    assert idle.recv(1) == b"A"
    proxy.client.set_route("d", listen, b.address, kind="http", idle_timeout=0.3)
    # Nothing moves on the connection: it is closed and the drain completes early.
    assert proxy.client.drain("d", a.address, timeout=30) == \
        {"drained": True, "live": 0, "closed": 0}
    idle.settimeout(10)
    assert idle.recv(10) == b""
    idle.close()


def test_no_idle_close_on_tcp_route(proxy, echo_pair):
    a, b = echo_pair
    listen = _setup(proxy, a, idle=0.1)  # idleTimeout is ignored for kind tcp
    held = connect(listen)
    assert held.recv(1) == b"A"
    proxy.client.set_route("d", listen, b.address, idle_timeout=0.1)
    assert proxy.client.drain("d", a.address, timeout=0.6)["drained"] is False
    held.close()
