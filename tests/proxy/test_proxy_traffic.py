"""Weighted backends, pause/resume, maintenance and request-aware idle close, through the real
daemon with real sockets."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.client import ProxyError
from proxy_servers import HttpServer, connect, free_port, http_get, recv_all, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def http_pair() -> Iterator[tuple[HttpServer, HttpServer]]:
    a, b = HttpServer("A"), HttpServer("B")
    yield a, b
    a.close()
    b.close()


def _route(proxy, backend: str, kind: str = "http", **kw) -> str:
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("t", listen, backend, kind=kind, **kw)
    return listen


def _answers(listen: str, n: int, **kw) -> Counter:
    return Counter(http_get(listen, **kw)[1] for _ in range(n))


def test_weighted_split_exact_per_cycle_then_promote(proxy, http_pair):
    a, b = http_pair
    listen = _route(proxy, a.address)
    answer = proxy.client.set_route("t", listen, kind="http",
                                    backends=[(a.address, 70), (b.address, 30)])
    assert answer["previous"] == a.address and answer["draining"] == []
    assert _answers(listen, 100) == {"A": 70, "B": 30}
    weights = {x["address"]: (x["state"], x["weight"]) for x in answer["route"]["backends"]}
    assert weights == {a.address: ("active", 70), b.address: ("active", 30)}
    # Promote B: A drains (and is forgotten, nothing is live on it); every answer is B.
    answer = proxy.client.set_route("t", listen, b.address, kind="http")
    assert answer["previous"] == a.address and answer["draining"] == [a.address]
    assert _answers(listen, 20) == {"B": 20}


def test_sticky_split_keeps_each_client_on_one_backend(proxy, http_pair):
    a, b = http_pair
    listen = _route(proxy, a.address)
    proxy.client.set_route("t", listen, kind="http", sticky=True,
                           backends=[(a.address, 50), (b.address, 50)])
    seen = {}
    for i in range(2, 30):
        source = f"127.0.0.{i}"
        answers = _answers(listen, 3, source=source)
        assert len(answers) == 1, f"{source} moved between backends: {answers}"
        seen[source] = next(iter(answers))
    assert set(seen.values()) == {"A", "B"}
    assert proxy.client.route("t")["sticky"] is True


def test_pause_holds_requests_and_resume_sends_them_to_the_new_backend(proxy, http_pair):
    a, b = http_pair
    listen = _route(proxy, a.address)
    assert proxy.client.pause("t", max_pause=60)["paused"]["maxPause"] == 60
    results: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: results.append(http_get(listen)))
               for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: proxy.client.route("t")["held"] == 5, what="5 held connections")
    assert a.requests == 0
    proxy.client.set_route("t", listen, b.address, kind="http")  # the "update" mid-pause
    assert proxy.client.route("t")["paused"] is not None  # a switch keeps the pause
    route = proxy.client.resume("t")
    assert route["paused"] is None
    for t in threads:
        t.join(30)
    assert results == [(200, "B")] * 5 and a.requests == 0
    assert http_get(listen) == (200, "B")


def test_pause_past_max_pause_answers_504_on_http_and_closes_tcp(proxy, http_pair):
    a, _ = http_pair
    listen = _route(proxy, a.address)
    proxy.client.pause("t", max_pause=0.3)
    status, body = http_get(listen)
    assert status == 504 and "paused" in body
    tcp_listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("u", tcp_listen, a.address)
    proxy.client.pause("u", max_pause=0.3)
    sock = connect(tcp_listen)
    assert recv_all(sock) == b""
    sock.close()
    proxy.client.resume("t")
    assert http_get(listen) == (200, "A")


def test_maintenance_answers_503_with_message_and_survives_restart(make_proxy, http_pair,
                                                                   tmp_path):
    a, _ = http_pair
    proxy = make_proxy()
    listen = _route(proxy, a.address)
    tcp_listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("u", tcp_listen, a.address)
    proxy.client.maintenance("t", True, "Back at 10:00 <soon>")
    proxy.client.maintenance("u", True)
    proxy.client.pause("u", max_pause=45)
    status, body = http_get(listen)
    assert status == 503 and "Back at 10:00 &lt;soon&gt;" in body
    # A restart (even kill -9) keeps maintenance and the pause: they are in the state file.
    proxy.kill()
    proxy = make_proxy()
    routes = {r["name"]: r for r in proxy.client.routes()}
    assert routes["t"]["maintenance"] == {"message": "Back at 10:00 <soon>"}
    assert routes["u"]["paused"]["maxPause"] == 45 and routes["u"]["maintenance"]
    assert http_get(listen)[0] == 503
    sock = connect(tcp_listen)
    assert recv_all(sock) == b""  # tcp in maintenance: closed
    sock.close()
    proxy.client.maintenance("t", False)
    assert http_get(listen) == (200, "A")
    state = json.loads(open(proxy.state_path).read())
    assert "maintenance" not in state["routes"]["t"] and state["routes"]["u"]["paused"]


def test_slow_request_outlives_a_short_idle_timeout_on_a_draining_backend(proxy, http_pair):
    a, b = http_pair
    listen = _route(proxy, a.address, idle_timeout=1.0)
    results: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: results.append(http_get(listen, "/sleep/4")))
    slow.start()
    idle = connect(listen)  # a keep-alive connection that answered and went quiet
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: idle.recv(1000).endswith(b"A"), what="the quick answer")
    wait_for(lambda: a.requests >= 1 and proxy.client.route("t")["backends"][0]["live"] == 2,
             what="both connections on A")
    proxy.client.set_route("t", listen, b.address, kind="http", idle_timeout=1.0)
    # The quiet connection is closed as idle; the one awaiting its answer is not.
    idle.settimeout(10)
    assert recv_all(idle) == b""
    idle.close()
    drained = proxy.client.drain("t", a.address, timeout=30)
    slow.join(10)
    assert drained["drained"] is True and results == [(200, "A")]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(["PUT", "pause", "resume", "maintenance", "drain"]),
    body=st.recursive(
        st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
        | st.text(max_size=30) | st.sampled_from(["127.0.0.1:1", "[::1]:2", "0.0.0.0:0"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["listen", "backend", "backends", "address", "weight", "sticky",
                             "kind", "idleTimeout", "maxPause", "enabled", "message",
                             "timeout", "close", "x"]), inner, max_size=5),
        max_leaves=12),
)
def test_control_api_fuzz_never_answers_5xx(proxy, action, body):
    path = "/routes/f" if action == "PUT" else f"/routes/f/{action}"
    method = "PUT" if action == "PUT" else "POST"
    if not proxy.client.routes():
        proxy.client.set_route("f", f"127.0.0.1:{free_port()}", "127.0.0.1:9")
    try:
        proxy.client._call(method, path, body)
    except ProxyError as e:
        assert 400 <= e.status < 500, f"{method} {path} {body!r}: {e.status} {e}"
    route = proxy.client.route("f")  # still answers, still consistent
    assert route["state"] == "listening" or route["error"]
    if route["paused"]:
        proxy.client.resume("f")
    if route["maintenance"]:
        proxy.client.maintenance("f", False)
