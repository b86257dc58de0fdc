"""gantryd/slot_queue.py: a freed rollout slot wakes the first hosts in line, not all of
them; against the real (session) etcd and its watch."""
from __future__ import annotations

import threading

from gantryd.slot_queue import SlotQueue
from gantryd.store import Desired

from fleet_helpers import wait_for
from test_gantryd_store import bump


class Host:
    """One waiting host: its lease, its queue, and the wake-ups its watch would cause."""

    def __init__(self, store, machine: str) -> None:
        self.store, self.machine = store, machine
        self.lease = store.etcd.lease(5)
        self.queue = SlotQueue(store, machine)
        self.woken = threading.Event()

    def on_watch(self, batch) -> None:
        # What gantryd/daemon.py's watch does with slot and waiter deletions.
        for event in batch.events:
            ref = self.store.keys.parse(event.key)
            if event.kind != "delete":
                continue
            if ref.kind == "lock" and self.queue.slot_freed(ref.component):
                self.woken.set()
            if ref.kind == "waiters" and self.queue.waiter_gone(ref.component, event.key,
                                                                event.mod_revision):
                self.woken.set()

    def try_slot(self, desired: Desired):
        """One reconcile turn that wants a slot: take one, or queue."""
        self.queue.turn_begins("web")
        try:
            slot = self.store.acquire_slot("web", desired, self.machine, self.lease.id)
            if slot is None:
                return self.queue.join("web", self.lease.id, desired.max_parallel)
            self.queue.took_slot("web")
            return slot
        finally:
            self.queue.turn_ends("web")


def test_a_release_wakes_the_first_hosts_in_line_and_taking_a_slot_leaves_the_line(store):
    desired = store.change_desired(["web"], bump)["web"]  # maxParallel 2
    hosts = [Host(store, f"h{i}") for i in range(6)]
    watches = [store.watch(h.on_watch) for h in hosts]
    try:
        wait_for(lambda: all(w._call is not None for w in watches), 10, "the watches")
        slots = [hosts[0].try_slot(desired), hosts[1].try_slot(desired)]
        assert all(s is not None and hasattr(s, "index") for s in slots)
        # h2..h5 queue in this order: 0, 1, 2, 3 hosts ahead.
        assert [h.try_slot(desired) for h in hosts[2:]] == [0, 1, 2, 3]
        waiters = [kv.key.rsplit("/", 1)[1] for kv in
                   store.etcd.get_prefix(store.keys.waiters("web"))[0]]
        assert sorted(waiters) == ["h2", "h3", "h4", "h5"]
        # Asking again (woken, still busy) keeps the place: no new put, same count.
        assert hosts[3].try_slot(desired) == 1

        store.release_slot(slots[0], "h0")
        # The two hosts in front (maxParallel 2) wake; the others do not.
        wait_for(lambda: hosts[2].woken.is_set() and hosts[3].woken.is_set(), 10,
                 "the first two in line to wake")
        got = hosts[2].try_slot(desired)
        assert hasattr(got, "index")  # h2 took it, which took it out of the line
        # h4 moved up to second in line: woken once, to try whether a slot is free.
        wait_for(hosts[4].woken.is_set, 10, "h4 to move up")
        assert not hosts[5].woken.is_set()
        assert [kv.key.rsplit("/", 1)[1] for kv in
                store.etcd.get_prefix(store.keys.waiters("web"))[0]] == ["h3", "h4", "h5"]

        # A host that no longer waits (its turn wanted no slot) leaves the line; a dead host's
        # key goes with its lease: either way the ones behind move up.
        hosts[3].queue.turn_begins("web")
        hosts[3].queue.turn_ends("web")
        hosts[4].lease.revoke()
        wait_for(hosts[5].woken.is_set, 10, "h5 to move up")
        assert store.etcd.get_prefix(store.keys.waiters("web"))[0][0].key.endswith("/h5")
    finally:
        for w in watches:
            w.cancel()
        for h in hosts:
            h.lease.revoke()


def test_a_place_taken_while_its_watch_missed_events_wakes_on_every_release(store):
    desired = store.change_desired(["web"], bump)["web"]
    host = Host(store, "h1")
    try:
        host.queue.join("web", host.lease.id, 2)
        host.queue.forget()  # a watch resync: the set ahead may be stale
        assert host.queue.slot_freed("web")
        assert host.try_slot(desired) is not None  # a free slot: taken
        assert not host.queue.slot_freed("web")  # out of line: no more wake-ups
    finally:
        host.lease.revoke()
