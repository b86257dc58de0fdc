"""Unit tests on Twisted fakes (MemoryReactorClock): no sockets, no daemon."""

from __future__ import annotations

import os

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from proxy.address import Address, parse_address
from proxy.backend import DRAINING, Backend
from proxy.errors import BadRequest, Conflict
from proxy.forward import ClientSide
from proxy.route import Route
from proxy.spec import DrainRequest, PauseRequest, RouteSpec
from proxy.state import (CorruptState, SavedRoute, StateError, load_state, save_state,
                         set_aside)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_address_round_trip(ip, port):
    address = Address(str(ip), port)
    assert parse_address(str(address)) == address


@pytest.mark.parametrize("text", ["", "1.2.3.4", "1.2.3.4:0", "::1:80", "host:80", "1.2.3.4:-1",
                                  "1.2.3.4:65536", 80, None])
def test_bad_addresses(text):
    with pytest.raises(BadRequest):
        parse_address(text)


def test_listen_shorthands():
    assert parse_address(":80", listen=True) == Address("0.0.0.0", 80)
    assert parse_address("*:80", listen=True) == Address("0.0.0.0", 80)
    assert parse_address("localhost:80") == Address("127.0.0.1", 80)
    with pytest.raises(BadRequest):
        parse_address(":80")


def test_specs_validate():
    spec = RouteSpec.from_json({"listen": "127.0.0.1:80", "backend": "127.0.0.2:8080",
                                "kind": "http", "idleTimeout": 2})
    assert RouteSpec.from_json(spec.to_json()) == spec
    for body in ({"listen": "127.0.0.1:80"}, {"listen": "127.0.0.1:80", "backend": "1.1.1.1:1",
                                               "idleTimeout": -1},
                 {"listen": "127.0.0.1:80", "backend": "1.1.1.1:1", "idleTimeout": True}, []):
        with pytest.raises(BadRequest):
            RouteSpec.from_json(body)
    assert DrainRequest.from_json({"backend": "127.0.0.1:1"}).timeout == 30
    with pytest.raises(BadRequest):
        DrainRequest.from_json({"backend": "127.0.0.1:1", "close": "yes"})


def test_state_round_trip_and_atomic_write(tmp_path):
    path = str(tmp_path / "d" / "state.json")
    assert load_state(path) == {}
    b1, b2 = Address("10.0.0.2", 8080), Address("10.0.0.3", 8080)
    specs = {
        "a.b.80": SavedRoute(RouteSpec(Address("0.0.0.0", 80), b1, "http", 3.0)),
        "a.b.81": SavedRoute(RouteSpec(Address("0.0.0.0", 81), b1, "tcp", None,
                                       ((b1, 9), (b2, 1)), True),
                             PauseRequest(12.0), 1700000000.5, "back soon"),
    }
    save_state(path, specs)
    assert load_state(path) == specs
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["state.json"]  # no temp left
    (tmp_path / "d" / "state.json").write_text(json.dumps({"version": 1, "routes": {"x": {}}}))
    with pytest.raises(CorruptState):
        load_state(path)
    aside = set_aside(path)
    assert aside.startswith(path + ".corrupt-") and not os.path.exists(path)
    with pytest.raises(StateError, match="cannot be set aside"):
        set_aside(path)  # gone (or a rename refused): the daemon cannot start over it


class FakeConn:
    """Stands in for a ClientSide: byte counters and close calls."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.nbytes = self.backend_nbytes = 0
        self.awaits_answer = False
        self.closed_how: str | None = None
        backend.connection_opened(self)  # type: ignore[arg-type]

    def close(self, how: str) -> None:
        self.closed_how = how
        self.backend.connection_closed(self)  # type: ignore[arg-type]

    def abort(self) -> None:
        self.close("abort")

    def close_idle(self) -> None:
        self.close("idle")


def _route(reactor, kind="tcp", idle=None) -> Route:
    spec = RouteSpec(Address("127.0.0.1", 8000), Address("10.0.0.1", 80), kind, idle)
    route = Route("r", spec, reactor)
    route.start()
    return route


def test_switch_routes_new_connections_and_forgets_drained():
    reactor = MemoryReactorClock()
    route = _route(reactor)
    assert len(reactor.tcpServers) == 1
    old = route.backend
    conn = FakeConn(old)
    assert route.switch(Address("10.0.0.2", 80)) == Address("10.0.0.1", 80)
    assert len(reactor.tcpServers) == 1  # no re-bind on a switch
    proto = route._factory.buildProtocol(None)
    assert isinstance(proto, ClientSide) and proto.backend is route.backend
    assert old.state == DRAINING and list(route.backends) == [old.address, route.backend.address]
    conn.nbytes = 7
    conn.close("client")
    assert list(route.backends) == [Address("10.0.0.2", 80)]  # forgotten once drained
    assert route.totals()["bytesIn"] == 7 and route.totals()["opened"] == 1
    # Switching back to a forgotten address starts a fresh backend.
    assert route.switch(Address("10.0.0.1", 80)) == Address("10.0.0.2", 80)
    assert route.backend.opened == 0


def test_drain_timeout_and_force_close_on_clock():
    reactor = MemoryReactorClock()
    route = _route(reactor)
    old = route.backend
    conns = [FakeConn(old) for _ in range(2)]
    route.switch(Address("10.0.0.2", 80))
    d = defer.ensureDeferred(route.drain(old.address, 5, close=False))
    reactor.advance(4.9)
    assert not d.called
    conns[0].close("client")
    reactor.advance(0.2)
    assert d.result == {"drained": False, "live": 1, "closed": 0}
    d = defer.ensureDeferred(route.drain(old.address, 1, close=True))
    reactor.advance(1)
    assert d.result == {"drained": False, "live": 0, "closed": 1}
    assert conns[1].closed_how == "abort"
    assert route.drains == {"completed": 0, "forced": 1, "timeout": 1}


def test_idle_reaper_closes_only_idle_connections_while_draining():
    reactor = MemoryReactorClock()
    route = _route(reactor, kind="http", idle=1.0)
    old = route.backend
    busy, idle = FakeConn(old), FakeConn(old)
    reactor.advance(5)  # active backends are never reaped
    assert busy.closed_how is idle.closed_how is None
    route.switch(Address("10.0.0.2", 80))
    for _ in range(8):
        busy.nbytes += 1
        reactor.advance(0.25)
    assert idle.closed_how == "idle" and busy.closed_how is None
    d = defer.ensureDeferred(route.drain(old.address, 10, close=False))
    busy.close("client")
    assert d.result["drained"] is True


def test_bind_failure_is_conflict_and_error_state():
    reactor = MemoryReactorClock()

    def refuse(*a, **kw):
        from twisted.internet.error import CannotListenError
        raise CannotListenError("127.0.0.1", 8000, OSError(98, "Address already in use"))

    reactor.listenTCP = refuse  # type: ignore[method-assign]
    spec = RouteSpec(Address("127.0.0.1", 8000), Address("10.0.0.1", 80))
    route = Route("r", spec, reactor)
    with pytest.raises(Conflict, match="already in use"):
        route.start()
    assert route.to_dict()["state"] == "error" and "127.0.0.1:8000" in route.error


def test_idle_reaper_spares_a_connection_whose_client_spoke_last():
    reactor = MemoryReactorClock()
    route = _route(reactor, kind="http", idle=1.0)
    old = route.backend
    waiting, answered = FakeConn(old), FakeConn(old)
    waiting.nbytes, waiting.awaits_answer = 100, True  # request sent, answer not yet begun
    answered.nbytes, answered.backend_nbytes = 100, 500
    route.switch(Address("10.0.0.2", 80))
    reactor.advance(0.25)
    for _ in range(20):
        reactor.advance(0.25)
    assert answered.closed_how == "idle" and waiting.closed_how is None
    waiting.backend_nbytes, waiting.awaits_answer = 500, False  # the answer came
    for _ in range(6):
        reactor.advance(0.25)
    assert waiting.closed_how == "idle"


def test_balancer_smooth_weighted_and_sticky():
    from proxy.balance import Balancer
    balancer = Balancer([("a", 3), ("b", 1)])
    picks = [balancer.pick() for _ in range(8)]
    assert picks.count("b") == 2 and picks[:4].count("b") == 1  # spread, not bunched
    sticky = Balancer([("a", 50), ("b", 50)], sticky=True)
    first = {host: sticky.pick(host) for host in (f"10.0.0.{i}" for i in range(40))}
    assert {sticky.pick(h) for h in first for _ in range(3)} == set(first.values())
    assert all(sticky.pick(h) == b for h, b in first.items())
    assert set(first.values()) == {"a", "b"}


def test_weighted_backends_split_and_drain_the_ones_left_out():
    reactor = MemoryReactorClock()
    route = _route(reactor)
    a, b, c = Address("10.0.0.1", 80), Address("10.0.0.2", 80), Address("10.0.0.3", 80)
    conn = FakeConn(route.backend)
    assert route.set_backends(((a, 90), (b, 10))) == (a, [])
    chosen = [route._factory.buildProtocol(None).backend.address for _ in range(100)]
    assert chosen.count(b) == 10 and chosen.count(a) == 90
    assert route.spec.weights == ((a, 90), (b, 10))
    # Promote c alone: a (with a live connection) and b drain; b is forgotten at once.
    previous, draining = route.set_backends(((c, 1),))
    assert previous == a and set(draining) == {a, b}
    assert route.balancer is None and route.backend.address == c
    assert {x.address: x.state for x in route.backends.values()} == {a: DRAINING, c: "active"}
    conn.close("client")
    assert list(route.backends) == [c]
    assert route.to_dict()["backends"][0]["weight"] == 1


class FakeSocket:
    """An accepted socket as far as a pause and a maintenance answer use it."""

    def __init__(self):
        self.sent = b""
        self.closed = False

    def setblocking(self, flag):
        pass

    def fileno(self):
        return -1 if self.closed else 99

    def send(self, data):
        self.sent += bytes(data)
        return len(data)

    def shutdown(self, how):
        pass

    def recv(self, n):
        return b""

    def close(self):
        self.closed = True


def _pump(reactor) -> None:
    """What the real reactor would do next: read the sockets waiting to read (to EOF)."""
    for reader in list(reactor.readers):
        reader.doRead()


def test_pause_holds_then_forwards_to_the_current_backend_or_times_out():
    reactor = MemoryReactorClock()
    route = _route(reactor, kind="http")
    route.set_pause(10.0)
    early, late = FakeSocket(), FakeSocket()
    route._factory.buildProtocol(None).makeConnection(early)
    reactor.advance(6)
    route._factory.buildProtocol(None).makeConnection(late)
    assert route.held == 2 and route.backend.opened == 0  # held: not on any backend
    reactor.advance(4)
    _pump(reactor)
    assert early.closed and b"504 Gateway Timeout" in early.sent and route.held == 1
    route.switch(Address("10.0.0.2", 80))
    forwarded = []
    route.connect = lambda sock, host: forwarded.append((sock, route.pick(host).address))
    assert route.resume() == 1 and route.held == 0 and not route.gated
    assert forwarded == [(late, Address("10.0.0.2", 80))]


def test_maintenance_answers_503_on_http_and_closes_tcp():
    reactor = MemoryReactorClock()
    for kind, expect in (("http", b"503 Service Unavailable"), ("tcp", b"")):
        route = _route(reactor, kind=kind)
        route.set_maintenance(True, "<b>db</b> upgrade")
        sock = FakeSocket()
        route._factory.buildProtocol(None).makeConnection(sock)
        _pump(reactor)
        assert sock.closed and expect in sock.sent
        if kind == "http":
            assert b"&lt;b&gt;db&lt;/b&gt; upgrade" in sock.sent
        route.set_maintenance(False)
        assert isinstance(route._factory.buildProtocol(None), ClientSide)
