"""Unit tests on Twisted fakes (MemoryReactorClock): no sockets, no daemon."""

from __future__ import annotations

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
from proxy.spec import DrainRequest, RouteSpec
from proxy.state import StateError, load_state, save_state


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
    specs = {"a.b.80": RouteSpec(Address("0.0.0.0", 80), Address("10.0.0.2", 8080), "http", 3.0)}
    save_state(path, specs)
    assert load_state(path) == specs
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["state.json"]  # no temp left
    (tmp_path / "d" / "state.json").write_text(json.dumps({"version": 1, "routes": {"x": {}}}))
    with pytest.raises(StateError):
        load_state(path)


class FakeConn:
    """Stands in for a ClientSide: byte counters and close calls."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.nbytes = self.backend_nbytes = 0
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
