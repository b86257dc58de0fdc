"""gantryd's etcd client over its two transports: etcd's JSON gateway (the default) and gRPC,
which it takes by itself when the gateway cannot serve it: turned off (here) or refusing a
client certificate's CN as the user (test_gantryd_secured). Real etcds."""
from __future__ import annotations

import pytest

import rig
from fleet_helpers import wait_for
from gantryd import etcd as E


@pytest.fixture(scope="module")
def no_gateway():
    """An etcd started with its JSON gateway turned off."""
    cluster = rig.EtcdCluster(extra_args=("--enable-grpc-gateway=false",)).start()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
def test_the_same_calls_and_answers_over_both_transports(transport, etcd, no_gateway, project):
    client = E.Etcd(etcd.endpoints if transport == "gateway" else no_gateway.endpoints)
    base = f"/t/{project}/"
    seen: list[E.WatchBatch] = []
    watch = client.watch_prefix(base, seen.append)
    try:
        wait_for(watch.started.is_set, 10, "the watch")
        put_at = client.put(base + "a", b"1")
        assert client.get(base + "a") == E.KeyValue(base + "a", b"1", put_at, put_at, 1, 0)
        assert client.get(base + "none") is None

        lease = client.lease(10)
        assert 0 < client.refresh(lease.id) <= 10
        binary = bytes(range(256))
        taken = client.txn([E.absent(base + "b")], [E.Put(base + "b", binary, lease.id)])
        assert taken == E.TxnResult(True, put_at + 1)
        assert client.txn([E.absent(base + "b")], [E.Put(base + "b", b"x")],
                          [E.Put(base + "c", b"y")]) == E.TxnResult(False, put_at + 2)
        assert client.txn([E.Compare(base + "c", "value", "==", b"y"),
                           E.Compare(base + "c", "version", ">", 0)],
                          [E.Delete(base + "c")]) == E.TxnResult(True, put_at + 3, 1)

        kvs, at = client.get_prefix(base)
        assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [
            (base + "a", b"1", 0), (base + "b", binary, lease.id)]
        assert at == put_at + 3 == client.revision()
        assert client.get_keys(base) == [base + "a", base + "b"]

        lease.revoke()  # its key goes with it
        assert client.get(base + "b") is None
        assert client.refresh(lease.id) <= 0
        with pytest.raises(E.LeaseLost):
            client.put(base + "d", b"x", lease=lease.id)
        assert client.delete(base, prefix=True) == 1

        def events() -> list[tuple[str, str, bytes]]:
            return [(e.kind, e.key.removeprefix(base), e.value)
                    for batch in seen for e in batch.events]
        wait_for(lambda: len(events()) >= 6, 10, "the watch events")
        assert events() == [("put", "a", b"1"), ("put", "b", binary), ("put", "c", b"y"),
                            ("delete", "c", b""), ("delete", "b", b""), ("delete", "a", b"")]
    finally:
        watch.cancel()
        client.close()
    assert not watch._thread.is_alive()
    assert client._grpc is (transport == "grpc")


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
def test_cancelling_watches_while_they_wait_logs_nothing(transport, etcd, no_gateway, project,
                                                        caplog):
    """A watch cancelled from another thread while its thread waits in a read ends quietly
    (closing the HTTP connection under the reader once broke http.client's state, and the
    watch logged a traceback; `gantryd serve` and the daemons cancel watches as they stop)."""
    client = E.Etcd(etcd.endpoints if transport == "gateway" else no_gateway.endpoints)
    try:
        watches = [client.watch_prefix(f"/t/{project}/{i}/", lambda batch: None)
                   for i in range(20)]
        wait_for(lambda: all(w.started.is_set() for w in watches), 20, "the watches")
        for w in watches:
            w.cancel()
        assert not any(w._thread.is_alive() for w in watches)
    finally:
        client.close()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")], caplog.text


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
def test_watching_several_ranges_brings_their_changes_alone_and_resumes_each(
        transport, etcd, no_gateway, project):
    """A key, a prefix, a span of keys, deletions only and puts only: nothing else comes
    through; one stream breaking resumes where it was (nothing lost or repeated) while the
    group says it was down and up again."""
    endpoints = etcd.endpoints if transport == "gateway" else no_gateway.endpoints
    client, writer = E.Etcd(endpoints), E.Etcd(endpoints)  # (a break closes the channel)
    base = f"/t/{project}/"
    seen: list[E.WatchBatch] = []
    states: list[bool] = []
    watch = client.watch([E.Range(base + "k"), E.Range(base + "p/", prefix=True),
                          E.Range(base + "s1", end=base + "s3"),
                          E.Range(base + "d/", prefix=True, puts=False),
                          E.Range(base + "u/", prefix=True, deletes=False)],
                         seen.append, states.append)

    def events() -> list[tuple[str, str]]:
        return sorted((e.kind, e.key.removeprefix(base)) for b in seen for e in b.events)
    try:
        wait_for(watch.started.is_set, 10, "the watches")
        assert states == [True]
        for key in ("k", "k2", "p/1", "s1", "s2/x", "s3", "d/1", "u/1", "other"):
            writer.put(base + key, b"1")
        for key in ("d/1", "u/1", "s3"):
            writer.delete(base + key)
        wait_for(lambda: len(events()) == 6, 10, f"the events: {events()}")
        assert events() == [("delete", "d/1"), ("put", "k"), ("put", "p/1"), ("put", "s1"),
                            ("put", "s2/x"), ("put", "u/1")]

        broken = watch.watches[1]
        stream = broken._stream
        stream.interrupt()  # that stream breaks: its watch reconnects by itself
        for key in ("p/2", "k", "p/3"):
            writer.put(base + key, b"2")
        wait_for(lambda: len(events()) == 9 and broken._stream not in (None, stream), 10,
                 f"the events after the break: {events()}")
        writer.put(base + "p/4", b"3")  # on the new stream
        wait_for(lambda: len(events()) == 10, 10, f"the last event: {events()}")
        assert [e for e in events() if e[1].startswith("p/")] == [
            ("put", "p/1"), ("put", "p/2"), ("put", "p/3"), ("put", "p/4")]
        assert states == [True, False, True]
    finally:
        watch.cancel()
        client.close()
        writer.close()
