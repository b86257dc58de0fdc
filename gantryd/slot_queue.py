"""Which waiting hosts a freed rollout slot wakes up: the first in line, not all of them.

A host that finds every rollout slot busy puts a waiter key on its lease
(`components/<c>/waiters/<machine>`; etcd's create revision orders them) and reads which
waiters are ahead of it and which slots are held. From then on its etcd watch keeps both
current: a waiter key that goes (its host took a slot, stopped waiting, or died) leaves the
line, a slot key comes and goes. A host wakes only when it is within the free slots of the
front of the line (fewer hosts ahead than slots free), so one release wakes about one host
instead of every waiting host: a rollout costs O(hosts) etcd requests, not O(hosts^2), and the
host that gets the slot is not one of ninety woken together.

It is a wake-up order, never a lock: the slot itself is still taken by
`Store.acquire_slot`'s transaction, whoever asks. A change of the desired state, the freeze
key, a watch reconnect or resync and the daemon's 30 s re-check still wake every host, so an
event missed here costs at most that delay, never a stuck rollout. Taking a slot deletes the
waiter key in the same transaction; a host that stops waiting for any other reason deletes
it on its next turn (`turn_ends`), and a dead host's key goes with its lease.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field

from .etcd import EtcdError
from .store import Store, StoreError

log = logging.getLogger("gantryd.slot_queue")

# Slot and waiter events remembered for a place being taken: one the watch delivered between
# the snapshot reads and the place being stored must still count.
_RECENT = 4096


@dataclass
class _Place:
    lease: int
    limit: int  # maxParallel when it joined
    ahead: set[str] = field(default_factory=set)  # waiter keys queued before ours
    held: set[str] = field(default_factory=set)  # slot keys taken
    known: bool = True  # False: not known (joining failed, watch resync): wake on every release
    this_turn: bool = True  # (re)joined during the current reconcile turn

    @property
    def woken(self) -> bool:
        """Within the free slots at the front of the line (or not knowing)?"""
        return not self.known or len(self.ahead) < self.limit - len(self.held)


class SlotQueue:
    """This host's places in the waiter lines of its components."""

    def __init__(self, store: Store, machine: str) -> None:
        self.store = store
        self.machine = machine
        self._lock = threading.Lock()
        self._places: dict[str, _Place] = {}
        # component -> recent (kind "lock"|"waiters", key, deleted?, etcd revision)
        self._recent: dict[str, collections.deque[tuple[str, str, bool, int]]] = \
            collections.defaultdict(lambda: collections.deque(maxlen=_RECENT))

    # -- the reconcile thread ----------------------------------------------------------------
    def turn_begins(self, component: str) -> None:
        with self._lock:
            place = self._places.get(component)
            if place is not None:
                place.this_turn = False

    def join(self, component: str, lease: int, limit: int) -> tuple[int | None, bool]:
        """Every slot is busy: take (or keep) a place in line. Answers how many hosts are
        ahead (None when that is unknown) and whether to try again at once: the line as just
        read has a slot free for us (released after we found them all busy, before we were
        in line to be woken for it)."""
        with self._lock:
            place = self._places.get(component)
            if place is not None and place.lease == lease and place.known:
                place.this_turn, place.limit = True, limit
                return len(place.ahead), False
        try:
            line = self.store.join_queue(component, self.machine, lease)
        except (EtcdError, StoreError) as exc:
            log.debug("%s: could not queue for a slot (%s); woken by every release",
                      component, exc)
            line = None
        with self._lock:
            if line is None:
                self._places[component] = _Place(lease, limit, known=False)
                return None, False
            place = _Place(lease, limit, set(line.ahead), set(line.held))
            for kind, key, deleted, at in self._recent[component]:
                if kind == "waiters" and deleted and at > line.waiters_revision:
                    place.ahead.discard(key)
                elif kind == "lock" and at > line.slots_revision:
                    (place.held.discard if deleted else place.held.add)(key)
            self._places[component] = place
        log.info("%s: every rollout slot is busy; %d %s ahead in line", component,
                 len(place.ahead), "host" if len(place.ahead) == 1 else "hosts")
        return len(place.ahead), place.woken

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
        """The watch may have missed events (resync, reconnect): every release wakes us until
        the next turn takes the place again (a key still there keeps its place)."""
        with self._lock:
            for place in self._places.values():
                place.known = False

    # -- the watch thread ----------------------------------------------------------------------
    def slot_changed(self, component: str, key: str, deleted: bool, revision: int) -> bool:
        """A rollout slot was taken, or released (or expired): does this host wake up?"""
        with self._lock:
            self._recent[component].append(("lock", key, deleted, revision))
            place = self._places.get(component)
            if place is None:
                return False
            if not deleted:
                place.held.add(key)
                return False
            place.held.discard(key)
            return place.woken

    def waiter_gone(self, component: str, key: str, revision: int) -> bool:
        """A waiter key was deleted: answers whether this host moved up into the free slots
        (so that a slot the hosts in front did not take is not left idle)."""
        with self._lock:
            self._recent[component].append(("waiters", key, True, revision))
            place = self._places.get(component)
            if place is None or key not in place.ahead:
                return False
            place.ahead.discard(key)
            return place.known and place.woken
