"""gantryd.etcd, gantryd.keys and gantryd.store against the real (session) etcd."""
from __future__ import annotations

import socket
import threading

import pytest

from gantry.config import parse_config
from gantryd import etcd as E
from gantryd.keys import Keys
from gantryd.store import Desired, Event, MachineStatus, Store, StoreError

from fleet_helpers import wait_for

COMPONENT = {"name": "web", "repo": "localhost:5000/x/app", "tag": "v1",
             "rollout": {"maxParallel": 2}}


def ready(revision: int, current: Desired | None = None, image: str = "r@sha256:1") -> Desired:
    comp = parse_config({"components": [COMPONENT]}).components[0]
    return Desired("ready", revision, image, comp.spec_hash(), comp.to_dict(), "now")


def bump(name: str, current: Desired | None) -> Desired:
    return ready((current.revision if current else 0) + 1)


# -- etcd module ----------------------------------------------------------------------------

def test_endpoint_parsing():
    assert E.parse_endpoints("a:1, http://b:2/") == [E.Endpoint("a", 1), E.Endpoint("b", 2)]
    assert E.Endpoint.parse("host") == E.Endpoint("host", 2379)
    with pytest.raises(ValueError):
        E.parse_endpoints("")
    with pytest.raises(ValueError):
        E.Endpoint.parse("a:b")


def test_password_never_in_repr():
    creds = E.Credentials(user="u", password="s3cret")
    assert "s3cret" not in repr(creds)
    assert "s3cret" not in repr(E.Etcd(["127.0.0.1:1"], creds))


def test_failover_to_a_live_endpoint(etcd, project):
    client = E.Etcd(["127.0.0.1:1", *etcd.endpoints], timeout=2)
    try:
        client.put(f"/t/{project}", b"x")
        assert client.get(f"/t/{project}").value == b"x"
    finally:
        client.close()


def test_a_call_cut_by_another_threads_failover_goes_on(etcd, project):
    """Another thread gives the endpoint up (failed(): its channel closed) while our call is
    on it: the call, cancelled ("Channel closed!"), goes on to the next endpoint. Seen in
    the chaos run when an etcd member was killed under a multi-threaded client."""
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = E.Etcd([f"127.0.0.1:{silent.getsockname()[1]}", *etcd.endpoints], timeout=60)
        stuck, _ = client.current()

        def give_up() -> None:
            conn, _ = silent.accept()  # our call is connecting: cut it
            client.failed(stuck)
            conn.close()
        cutter = threading.Thread(target=give_up, daemon=True)
        cutter.start()
        try:
            client.put(f"/t/{project}", b"x")
            assert client.get(f"/t/{project}").value == b"x"
        finally:
            client.close()
        cutter.join(5)


def test_no_endpoint_answers():
    client = E.Etcd(["127.0.0.1:1", "127.0.0.1:2"], timeout=1)
    with pytest.raises(E.EtcdUnavailable):
        client.get("/x")
    client.close()


def test_txn_guards_on_mod_revision(store):
    key = f"/t/{store.project}/k"
    etcd = store.etcd
    assert etcd.txn([E.absent(key)], [E.Put(key, b"1")]).succeeded
    kv = etcd.get(key)
    assert not etcd.txn([E.absent(key)], [E.Put(key, b"2")]).succeeded
    assert etcd.txn([E.mod_revision_is(key, kv.mod_revision)], [E.Put(key, b"2")]).succeeded
    assert not etcd.txn([E.mod_revision_is(key, kv.mod_revision)], [E.Put(key, b"3")]).succeeded
    assert etcd.get(key).value == b"2"


def test_lease_keys_vanish_when_revoked_or_abandoned(store):
    etcd = store.etcd
    lease = etcd.lease(2)
    etcd.put(f"/t/{store.project}/a", b"x", lease=lease.id)
    lease.revoke()
    assert etcd.get(f"/t/{store.project}/a") is None
    lease = etcd.lease(1)
    etcd.put(f"/t/{store.project}/b", b"x", lease=lease.id)
    lease.abandon()  # like a crashed host: no more keepalives
    wait_for(lambda: etcd.get(f"/t/{store.project}/b") is None, 10, "the lease to expire")


def test_lease_is_kept_alive(store):
    """A 1 s lease outlives its TTL three times over: no delete event for its key."""
    lease = store.etcd.lease(1)
    key = f"/t/{store.project}/kept"
    store.etcd.put(key, b"x", lease=lease.id)
    deleted = threading.Event()
    w = store.etcd.watch_prefix(key, lambda b: any(e.kind == "delete" for e in b.events)
                                and deleted.set())
    try:
        assert not deleted.wait(3)
        assert store.etcd.get(key) is not None and lease.alive
    finally:
        w.cancel()
        lease.revoke()


def test_watch_delivers_changes_in_order(store):
    seen: list[E.WatchEvent] = []
    up = threading.Event()
    w = store.watch(lambda batch: seen.extend(batch.events), on_state=lambda s: s and up.set())
    try:
        assert up.wait(10)
        store.etcd.put(store.keys.config, b"{}")
        store.etcd.delete(store.keys.config)
        wait_for(lambda: len(seen) == 2, 10, "two events")
        assert [e.kind for e in seen] == ["put", "delete"]
        assert seen[0].mod_revision < seen[1].mod_revision
    finally:
        w.cancel()


# -- keys -----------------------------------------------------------------------------------

def test_key_layout():
    k = Keys("shop", "gantryd/")
    assert k.config == "/gantryd/projects/shop/config"
    assert k.desired("web") == "/gantryd/projects/shop/components/web/desired"
    assert k.machine("web", "h1") == "/gantryd/projects/shop/components/web/machines/h1"
    assert k.lock("web", 1) == "/gantryd/projects/shop/components/web/lock/1"
    assert k.parse(k.machine("web", "h1")).kind == "machines"
    assert k.parse(k.lock("web", 0)).component == "web"
    assert k.history_entry("web", 3) < k.history_entry("web", 10)
    with pytest.raises(ValueError):
        Keys("a/b")
    with pytest.raises(ValueError):
        k.machine("web", "../x")


# -- store ----------------------------------------------------------------------------------

def test_config_round_trip(store):
    config = parse_config({"components": [COMPONENT]}, "test")
    assert store.config() is None
    store.set_config(config)
    assert store.config() == config
    assert store.config_json() == config.to_dict()


def test_desired_changes_in_one_transaction_with_history(store):
    store.change_desired(["web", "api"], bump)
    second = store.change_desired(["web", "api"], bump)
    assert {c: d.revision for c, d in second.items()} == {"web": 2, "api": 2}
    # Both keys were written by the same transaction.
    assert second["web"].mod_revision == second["api"].mod_revision
    assert [d.revision for d in store.history("web")] == [1, 2]
    assert store.desired("web").max_parallel == 2


def test_concurrent_writers_lose_no_update(store):
    """Guarded on mod_revision: N racing updates give N revisions, none overwritten."""
    threads = [threading.Thread(target=store.change_desired, args=(["web"], bump))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.desired("web").revision == 5
    assert [d.revision for d in store.history("web")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("value, message", [
    (b"not json", "not JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"status": "ready"}', "missing 'revision'"),
    (b'{"status": "bogus", "revision": 1}', "status must be one of"),
    (b'{"status": "ready", "revision": "1", "image": "x"}', "'revision' must be int"),
    (b'{"status": "ready", "revision": true, "image": "x"}', "'revision' must be int"),
    (b'{"status": "ready", "revision": 1}', "needs an image"),
])
def test_hand_written_desired_gives_a_clear_error(store, value, message):
    store.etcd.put(store.keys.desired("web"), value)
    with pytest.raises(StoreError) as err:
        store.desired("web")
    assert message in str(err.value) and store.keys.desired("web") in str(err.value)


def test_halt_is_first_failure_wins_and_only_for_its_revision(store):
    d1 = store.change_desired(["web"], bump)["web"]
    assert store.halt("web", d1, "h1", "boom")
    assert not store.halt("web", d1, "h2", "later")
    halted = store.desired("web")
    assert halted.is_halted and halted.halted.machine == "h1" and halted.halted.error == "boom"
    d2 = store.change_desired(["web"], bump)["web"]  # the next update resumes
    assert not d2.is_halted and not store.desired("web").is_halted
    assert not store.halt("web", d1, "h3", "stale")  # an old revision halts nothing
    assert [e.kind for e in store.events("web")] == ["halted"]


def test_slots_are_limited_to_max_parallel_and_expire_with_the_lease(store):
    desired = store.change_desired(["web"], bump)["web"]
    leases = [store.etcd.lease(1) for _ in range(3)]
    try:
        a = store.acquire_slot("web", desired, "h1", leases[0].id)
        b = store.acquire_slot("web", desired, "h2", leases[1].id)
        assert a and b and {a.index, b.index} == {0, 1}
        assert store.acquire_slot("web", desired, "h3", leases[2].id) is None
        # Asking again with the same lease answers the slot already held.
        assert store.acquire_slot("web", desired, "h1", leases[0].id).index == a.index
        assert store.release_slot(a, "h1")
        c = store.acquire_slot("web", desired, "h3", leases[2].id)
        assert c is not None and c.index == a.index
        leases[1].abandon()  # h2 crashes: its slot frees itself
        wait_for(lambda: store.acquire_slot("web", desired, "h1", leases[0].id), 10,
                 "h2's slot to expire")
        assert not store.release_slot(b, "h2")  # recorded as lost, not as released
        kinds = [(e.kind, e.machine) for e in store.events("web")]
        assert ("lost", "h2") in kinds and kinds[0] == ("acquired", "h1")
    finally:
        for lease in leases:
            lease.revoke()


def test_no_slot_for_a_stale_desired_state(store):
    old = store.change_desired(["web"], bump)["web"]
    store.change_desired(["web"], bump)
    lease = store.etcd.lease(5)
    try:
        with pytest.raises(StoreError):
            store.acquire_slot("web", old, "h1", lease.id)
        assert store.holders("web") == []
    finally:
        lease.revoke()


def test_machine_status_round_trip_and_lease(store):
    lease = store.etcd.lease(5)
    status = MachineStatus("h1", "ready", 3, "r@sha256:1", "abc", "now", None, None)
    store.put_machine("web", status, lease.id)
    assert store.machines("web") == [status]
    lease.revoke()
    assert store.machines("web") == []


def test_event_order_is_etcd_order(store):
    for i in range(3):
        store.record("web", Event("acquired", f"h{i}", 1, slot=0))
    events = store.events("web")
    assert [e.machine for e in events] == ["h0", "h1", "h2"]
    assert events[0].etcd_revision < events[1].etcd_revision < events[2].etcd_revision


def test_prefixes_are_isolated(etcd, project):
    client = E.Etcd(etcd.endpoints)
    try:
        a, b = Store(client, project, "/one"), Store(client, project, "/two")
        a.change_desired(["web"], bump)
        assert b.desired("web") is None
    finally:
        client.close()


def test_a_request_on_an_expired_lease_raises_lease_lost(store):
    """After an outage longer than its TTL the lease is gone: requests on it say so, and the
    keepalive marks it lost (the daemon then takes a new one)."""
    lease = store.etcd.lease(1)
    lease.abandon()
    gone = lease.id
    store.etcd.revoke(gone)  # what the TTL does during an outage, without waiting for it
    with pytest.raises(E.LeaseLost):
        store.etcd.put(f"/t/{store.project}/on-expired", b"x", lease=gone)
    kept = store.etcd.lease(1)
    store.etcd.revoke(kept.id)
    wait_for(lambda: kept.lost.is_set(), 10, "the keepalive to notice the lease is gone")
    assert not kept.alive
