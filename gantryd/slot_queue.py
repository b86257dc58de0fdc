"""Which waiting hosts a freed rollout slot wakes up: the first ones in line, not all.

A host that finds every rollout slot busy puts a waiter key on its lease
(`components/<c>/waiters/<machine>`; etcd's create revision orders them) and remembers the
keys queued before it. From then on its etcd watch keeps that set current: a waiter key that
goes (its host took a slot, stopped waiting, or died) leaves it. A slot release wakes only
the hosts with fewer than `maxParallel` waiters ahead, instead of every waiting host: each
release costs a few hosts' re-checks, so a rollout costs O(hosts) etcd requests, not
O(hosts^2), and the host that gets the slot is not one of ninety woken together.

It is a wake-up order, never a lock: the slot itself is still taken by
`Store.acquire_slot`'s transaction, whoever asks. A change of the desired state, the freeze
key, a watch resync and the daemon's 30 s re-check still wake every host, so an event missed
here costs at most that delay, never a stuck rollout. Taking a slot deletes the waiter key in
the same transaction; a host that stops waiting for any other reason deletes it on its next
turn (`turn_ends`), and a dead host's key goes with its lease.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field

from .etcd import EtcdError
from .store import Store, StoreError

log = logging.getLogger("gantryd.slot_queue")

# Waiter deletions remembered for a place being taken: one the watch delivered between the
# snapshot read and the place being stored must still count.
_RECENT = 4096


@dataclass
class _Place:
    lease: int
    limit: int  # maxParallel when it joined
    ahead: set[str] = field(default_factory=set)
    known: bool = True  # False: joining failed; wake on every release (the old way)
    this_turn: bool = True  # (re)joined during the current reconcile turn


class SlotQueue:
    """This host's places in the waiter queues of its components."""

    def __init__(self, store: Store, machine: str) -> None:
        self.store = store
        self.machine = machine
        self._lock = threading.Lock()
        self._places: dict[str, _Place] = {}
        self._gone: dict[str, collections.deque[tuple[str, int]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=_RECENT))

    # -- the reconcile thread ----------------------------------------------------------------
    def turn_begins(self, component: str) -> None:
        with self._lock:
            place = self._places.get(component)
            if place is not None:
                place.this_turn = False

    def join(self, component: str, lease: int, limit: int) -> int | None:
        """Every slot is busy: take (or keep) a place in line; answers how many hosts are
        ahead (None when that is unknown)."""
        with self._lock:
            place = self._places.get(component)
            if place is not None and place.lease == lease and place.known:
                place.this_turn, place.limit = True, limit
                return len(place.ahead)
        try:
            joined = self.store.join_queue(component, self.machine, lease)
        except (EtcdError, StoreError) as exc:
            log.debug("%s: could not queue for a slot (%s); woken by every release",
                      component, exc)
            joined = None
        with self._lock:
            if joined is None:
                self._places[component] = _Place(lease, limit, known=False)
                return None
            revision, _, ahead = joined
            ahead -= {key for key, at in self._gone[component] if at > revision}
            self._places[component] = _Place(lease, limit, ahead)
        log.info("%s: every rollout slot is busy; %d %s ahead in line", component, len(ahead),
                 "host" if len(ahead) == 1 else "hosts")
        return len(ahead)

    def took_slot(self, component: str) -> None:
        """The slot was taken (its transaction deleted the waiter key)."""
        with self._lock:
            self._places.pop(component, None)

    def turn_ends(self, component: str) -> None:
        """End of a reconcile turn: a host that did not wait for a slot in it leaves the
        line (retried next turn if etcd does not answer)."""
        with self._lock:
            place = self._places.get(component)
            if place is None or place.this_turn:
                return
        try:
            self.store.leave_queue(component, self.machine)
        except (EtcdError, StoreError) as exc:
            log.debug("%s: could not leave the slot queue (%s); next turn", component, exc)
            return
        with self._lock:
            if self._places.get(component) is place:
                del self._places[component]

    def forget(self) -> None:
        """The watch may have missed events (resync) or the lease changed: places are
        taken again at the next turn (a key still there keeps its place)."""
        with self._lock:
            for place in self._places.values():
                place.known = False

    # -- the watch thread ----------------------------------------------------------------------
    def waiter_gone(self, component: str, key: str, revision: int) -> bool:
        """A waiter key was deleted: answers whether this host moved up to a place a freed
        slot would wake (so that a slot nobody at the front took is not left idle)."""
        with self._lock:
            self._gone[component].append((key, revision))
            place = self._places.get(component)
            if place is None or key not in place.ahead:
                return False
            place.ahead.discard(key)
            return len(place.ahead) == place.limit - 1

    def slot_freed(self, component: str) -> bool:
        """A rollout slot was released (or expired): does this host wake up for it?"""
        with self._lock:
            place = self._places.get(component)
            return place is not None and (not place.known or len(place.ahead) < place.limit)
