"""Exact counts under many connections; atomic switches under continuous load."""

from __future__ import annotations

import threading

import pytest

from proxy_servers import connect, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def test_exact_counts_500_concurrent(proxy, echo):
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("many", listen, echo.address)
    socks = []
    try:
        for _ in range(500):
            s = connect(listen)
            s.sendall(b"x")
            assert s.recv(1) == b"x"  # the pair is up end to end
            socks.append(s)
        b = proxy.client.route("many")["backends"][0]
        assert (b["live"], b["opened"], b["closed"]) == (500, 500, 0)
    finally:
        for s in socks:
            s.close()
    b = wait_for(lambda: (r := proxy.client.route("many")["backends"][0])["live"] == 0 and r,
                 what="live to reach 0")
    assert (b["opened"], b["closed"], b["errors"]) == (500, 500, 0)
    assert b["bytesIn"] == b["bytesOut"] == 500


def test_switch_back_and_forth_under_load_drops_nothing(proxy, echo_pair):
    a, b = echo_pair
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route("sw", listen, a.address)
    stop = threading.Event()
    seen = {b"A": 0, b"B": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def hammer() -> None:
        while not stop.is_set():
            try:
                with connect(listen, timeout=10) as s:
                    tag = s.recv(1)
                if tag not in seen:
                    raise AssertionError(f"got {tag!r}")
                with lock:
                    seen[tag] += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(repr(e))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: seen[b"A"] > 20, what="load to start")
        for i in range(50):
            target, previous = (b, a) if i % 2 == 0 else (a, b)
            answer = proxy.client.set_route("sw", listen, target.address)
            assert answer["previous"] == previous.address
            count = sum(seen.values())
            wait_for(lambda count=count: sum(seen.values()) >= count + 3,
                     what="connections after switch")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert failures == []
    assert seen[b"A"] > 0 and seen[b"B"] > 0
    with connect(listen) as s:  # the last switch (i=49) went back to A
        assert s.recv(1) == b"A"
    route = wait_for(lambda: (r := proxy.client.route("sw"))
                     and all(x["live"] == 0 for x in r["backends"]) and r)
    assert sum(x["errors"] for x in route["backends"]) == 0
    assert [x["address"] for x in route["backends"]] == [a.address]  # B drained, forgotten
