"""gantryd/slot_queue.py: a freed rollout slot wakes the first host in line, not all of
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
            if ref.kind == "lock" and self.queue.slot_changed(
                    ref.component, event.key, event.kind == "delete", event.mod_revision):
                self.woken.set()
            if ref.kind == "waiters" and event.kind == "delete" and self.queue.waiter_gone(
                    ref.component, event.key, event.mod_revision):
                self.woken.set()

    def try_slot(self, desired: Desired):
        """One reconcile turn that wants a slot: take one, or queue."""
        self.queue.turn_begins("web")
        try:
            slot = self.store.acquire_slot("web", desired, self.machine, self.lease.id)
            if slot is None:
                ahead, again = self.queue.join("web", self.lease.id, desired.max_parallel)
                assert not again  # every slot was busy when the line was read
                return ahead
            self.queue.took_slot("web")
            return slot
        finally:
            self.queue.turn_ends("web")


def test_a_release_wakes_the_first_host_in_line_and_taking_a_slot_leaves_the_line(store):
    desired = store.change_desired(["web"], bump)["web"]  # maxParallel 2
    hosts = [Host(store, f"h{i}") for i in range(6)]
    watches = [store.watch(h.on_watch) for h in hosts]
    try:
        wait_for(lambda: all(w.started.is_set() for w in watches), 10, "the watches")
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
        # One slot free: the host in front wakes, the others do not.
        wait_for(hosts[2].woken.is_set, 10, "the first in line to wake")
        got = hosts[2].try_slot(desired)
        assert hasattr(got, "index")  # h2 took it, which took it out of the line
        assert [kv.key.rsplit("/", 1)[1] for kv in
                store.etcd.get_prefix(store.keys.waiters("web"))[0]] == ["h3", "h4", "h5"]
        store.release_slot(slots[1], "h1")  # the next release wakes the next in line
        wait_for(hosts[3].woken.is_set, 10, "h3 to wake")
        assert not any(h.woken.is_set() for h in hosts[4:])
        hosts[3].woken.clear()

        # h3 does not take the free slot: it no longer waits (its turn wanted no slot), and
        # leaves the line; h4, now in front with a slot free, wakes and takes it. Then h4
        # dies: its slot goes with its lease, and h5, in front now, wakes for it.
        hosts[3].queue.turn_begins("web")
        hosts[3].queue.turn_ends("web")
        wait_for(hosts[4].woken.is_set, 10, "h4 to move up to the free slot")
        assert hasattr(hosts[4].try_slot(desired), "index")
        hosts[4].lease.revoke()  # h4 dies holding the slot
        wait_for(hosts[5].woken.is_set, 10, "h5 to wake for the slot h4's lease freed")
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
        host.queue.forget()  # a watch resync: the line as we know it may be stale
        assert host.queue.slot_changed("web", "any/lock/0", True, 1)
        assert host.try_slot(desired) is not None  # a free slot: taken
        assert not host.queue.slot_changed("web", "any/lock/0", True, 2)  # out of line
    finally:
        host.lease.revoke()


def test_a_slot_freed_before_the_line_was_read_is_tried_at_once(store):
    """All busy at the slot read, one released before the host is in line: nobody will wake
    it for that release, so joining says to try again at once."""
    desired = store.change_desired(["web"], bump)["web"]  # maxParallel 2
    hosts = [Host(store, f"h{i}") for i in range(3)]
    try:
        a, _ = [h.try_slot(desired) for h in hosts[:2]]
        assert hosts[2].store.acquire_slot("web", desired, "h2", hosts[2].lease.id) is None
        store.release_slot(a, "h0")
        assert hosts[2].queue.join("web", hosts[2].lease.id, 2) == (0, True)
    finally:
        for h in hosts:
            h.lease.revoke()
