"""Fleet notifications, the claiming and delivering half (what they say: notify_events.py).

Every `gantryd run` runs a Notifier in threads of its own (never in the way of a rollout), and
one of them at a time notifies: the host holding `notify/leader` (on its daemon's lease:
`elect`), which watches the project; the others wait for that key to go (their daemon's
watch covers it) and take it over then, so that not every host decodes every host's status.
For the leader, a record that is an event (notify_events.derive) makes it try to claim
the event: one transaction creates `components/<c>/notify/<r>/<name>` (only if absent) with
the payload and one pending state per target, and `.../<name>/owner` on the notifier's
lease. Exactly one host wins (the claim, not the election, makes it so); it delivers,
retrying each target with backoff (one thread per target, in order, so a dead receiver holds
up no other), and records each target's outcome
(`sent`, `failed`, `dropped`: no longer in the config). When the owner dies, its lease
expires, its owner keys go and so does `notify/leader`: another host takes the lead, catches
up from the cursor (below), and takes the records left pending over with a transaction of
its own and delivers the same bytes under the same delivery id: a receiver sees an event
twice only when a sender died between its request and recording `sent`.

A notifier that starts picks up what happened while none ran: `notify/cursor` holds the etcd
revision up to which events were claimed; records written since are derived again (a claim
made already is not made twice). Claims are pruned with the revisions (rollout.keepRevisions).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable

from gantry.config.model import Notification

from . import etcd as E
from . import history as H
from . import notify_events as N
from .store import Desired, Store, StoreError, _dump, now_iso

log = logging.getLogger("gantryd.notify")

PENDING, SENT, FAILED, DROPPED = "pending", "sent", "failed", "dropped"
OWNER = "/owner"
RESCAN_INTERVAL = 60.0  # look for records without an owner even without a watch event
CURSOR_EVERY = 1.0  # at most one cursor write a second per host
REQUEST_TIMEOUT = 5.0
ETCD_BACKOFF_START, ETCD_BACKOFF_MAX = 0.25, 5.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx comes back as an HTTPError: a failed delivery


_OPENER = urllib.request.build_opener(_NoRedirect)


def host_of(url: str) -> str:
    """The host of a target, what logs show (its path may be a credential)."""
    rest = url.partition("://")[2]
    return rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]


def post(n: Notification, event: dict[str, Any],
         timeout: float = REQUEST_TIMEOUT) -> tuple[bool, bool, str]:
    """Deliver `event` to `n` once: (delivered, no use retrying, what happened)."""
    body, headers = N.request(n, event)
    req = urllib.request.Request(n.url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as reply:
            reply.read(65536)
            return True, False, f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return False, N.permanent(exc.code), f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, False, str(reason) or type(reason).__name__


class Notifier:
    """Claims and delivers the notifications of one project (`machine`: this host)."""

    def __init__(self, store: Store, machine: str, lease_ttl: int = 15,
                 backoff: N.Backoff | None = None):
        self.store = store
        self.keys = store.keys
        self.machine = machine
        self.lease_ttl = lease_ttl
        self.backoff = backoff or N.Backoff.from_env()
        self._stop = threading.Event()
        self._batches: queue.Queue[E.WatchBatch | None] = queue.Queue()
        self._watch: E.Watch | None = None  # of the whole project, while we notify
        # Elected (`elect`): we notify only while we hold the leader key (of the term that
        # began at etcd revision `_term`); `_vacant`: the key went (fed by the daemon's watch).
        self._elected = False
        self._leading = False
        self._term = 0
        self._vacant = threading.Event()
        self._begun = False
        self._since = 0  # events up to this revision were taken from the catch-up read
        self._lease: E.Lease | None = None
        # The daemon's lease, lent (`elect`): one keep-alive per host instead of two.
        self._lent: Callable[[], E.Lease | None] | None = None
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[str]] = {}  # target id -> record keys
        self._queued: set[tuple[str, str]] = set()  # (record key, target id) being delivered
        self._seen = 0  # the etcd revision whose events were claimed
        # The cursor exists once notifications were configured; from then on it moves with
        # every event, configured or not, so that turning them on again later does not
        # replay what happened meanwhile.
        self._cursor_kept = False
        self._cursor_due: int | None = None
        self._cursor_at = 0.0
        self._problem: str | None = None
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------
    def elect(self, lease: Callable[[], E.Lease | None]) -> None:
        """Notify only while this host holds `notify/leader`, on the lease `lease` answers
        (the daemon's, which the daemon keeps alive and renews; our owner keys go on it too).
        The caller's watch of `ranges` calls `feed`. Call before `start`."""
        self._elected = True
        self._lent = lease

    @property
    def ranges(self) -> list[E.Range]:
        """What an elected notifier needs watched for it: the leader key going."""
        return [E.Range(self.keys.notify_leader, puts=False)]

    def feed(self, batch: E.WatchBatch) -> None:
        """A batch of the caller's watch: the leader key gone (after our own term began), or
        events maybe missed (resync), make us try to take the lead."""
        leader = self.keys.notify_leader
        if batch.resync or any(ev.key == leader and ev.kind == "delete"
                               and ev.mod_revision > self._term for ev in batch.events):
            self._vacant.set()
            self._batches.put(E.WatchBatch((), batch.revision))  # wakes the loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop; what we still had to deliver goes to the other hosts at once (lease revoked)."""
        self._stop.set()
        self._batches.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._watch is not None:
            self._watch.cancel()
        # A lent one is its owner's to revoke (our leader key goes with it).
        if self._lease is not None and self._lent is None:
            self._lease.revoke()

    def _run(self) -> None:
        delay, batch = ETCD_BACKOFF_START, None
        next_rescan = 0.0
        while not self._stop.is_set():
            try:
                taken = self._ensure_lease()
                if self._elected and not self._lead(taken):
                    batch = None  # (a wake-up, or left over from our last term)
                    self._next_batch(time.monotonic() + RESCAN_INTERVAL)  # the lead freed?
                else:
                    if taken or not self._begun:
                        self._begin()
                        next_rescan = time.monotonic() + RESCAN_INTERVAL
                    if batch is None:
                        batch = self._next_batch(next_rescan)
                    if batch is not None:
                        self._handle(batch)
                        batch = None
                    if time.monotonic() >= next_rescan:
                        self._adopt_orphans()
                        next_rescan = time.monotonic() + RESCAN_INTERVAL
                    self._write_cursor()
                if self._problem is not None:
                    log.info("notifications: back to normal (was: %s)", self._problem)
                    self._problem = None
                delay = ETCD_BACKOFF_START
            except Exception as exc:  # never die: retry the same batch with backoff
                if isinstance(exc, E.LeaseLost) and self._lease is not None:
                    self._lease.lost.set()
                self._trouble(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, ETCD_BACKOFF_MAX)

    def _trouble(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self._problem:
            if isinstance(exc, (E.EtcdError, StoreError)):
                log.warning("notifications: %s; retrying", message)
            else:
                log.exception("notifications: unexpected error; retrying")
            self._problem = message

    def _ensure_lease(self) -> bool:
        """Hold a live lease for our owner keys; True when a new one was taken (the keys of
        the old one are gone: records may wait for an owner)."""
        if self._lent is not None:
            lease = self._lent()
            if lease is None or not lease.alive:
                raise E.EtcdError("the daemon's lease is being renewed")
            taken, self._lease = lease is not self._lease, lease
            return taken
        if self._lease is not None and self._lease.alive:
            return False
        if self._lease is not None:
            self._lease.abandon()
        self._lease = self.store.etcd.lease(self.lease_ttl)
        return True

    # -- the election ----------------------------------------------------------------------
    def _lead(self, new_lease: bool) -> bool:
        """Do we notify? Takes the leader key when it is free (a get, and a transaction only
        then: standing by costs one read per RESCAN_INTERVAL)."""
        if new_lease or self._vacant.is_set():
            self._step_down()  # our key went (with our old lease), or someone else's did
        if self._leading:
            return True
        self._vacant.clear()
        assert self._lease is not None
        key, lease = self.keys.notify_leader, self._lease.id
        kv = self.store.etcd.get(key)
        if kv is None:
            result = self.store.etcd.txn(
                [E.absent(key)], [E.Put(key, _dump({"machine": self.machine}), lease)])
            if not result.succeeded:
                return False  # another host was quicker
            self._term = result.revision
        elif kv.lease == lease:  # ours (a retried request went through)
            self._term = kv.create_revision
        else:
            return False
        self._leading = True
        log.info("notifications: this host delivers them now")
        return True

    def _step_down(self) -> None:
        """No longer the leader: stop watching the project (what we own we still deliver)."""
        if self._leading:
            log.info("notifications: this host no longer delivers new ones")
        self._leading = self._begun = False
        # The next leader derives again from the cursor as it is (claims are not made twice).
        self._cursor_due = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _begin(self) -> None:
        if not self._begun:
            cursor = self._read_cursor()
            if cursor is None:  # the first notifier ever: news since targets were configured
                config = self.store.etcd.get(self.keys.config)
                if (_record(config, "components") or {}).get("notifications"):
                    cursor = config.mod_revision
            if cursor is None:
                revision = self.store.etcd.revision()
            else:
                kvs, revision = self.store.etcd.get_prefix(self.keys.root)
                self._catch_up(kvs, cursor)
            self._seen = self._since = revision
            self._watch = self.store.watch(self._batches.put, start_revision=revision + 1)
            self._begun = True
        self._adopt_orphans()

    def _next_batch(self, next_rescan: float) -> E.WatchBatch | None:
        wait = next_rescan - time.monotonic()
        if self._cursor_due is not None:
            wait = min(wait, self._cursor_at + CURSOR_EVERY - time.monotonic())
        try:
            return self._batches.get(timeout=max(0.01, wait))
        except queue.Empty:
            return None

    # -- claims ----------------------------------------------------------------------------
    def _handle(self, batch: E.WatchBatch) -> None:
        if batch.resync:  # etcd compacted what we missed: derive from what is there now
            kvs, revision = self.store.etcd.get_prefix(self.keys.root)
            self._catch_up(kvs, self._seen)
            self._adopt_orphans()
            self._seen = revision
            return
        events = [ev for ev in batch.events if ev.mod_revision > self._since]
        if not events:
            return
        facts = [(ev.mod_revision, f) for ev in events if ev.kind == "put"
                 and (f := N.derive(self.keys, ev.key, ev.value, ev.mod_revision))]
        self._claim_all(facts)
        for ev in events:
            if ev.kind == "delete" and ev.key.endswith(OWNER) and \
                    self.keys.parse(ev.key).kind == "notify":
                self._adopt(ev.key[:-len(OWNER)])
        self._seen = max(self._seen, max(ev.mod_revision for ev in events))

    def _catch_up(self, kvs: Iterable[E.KeyValue], since: int) -> None:
        self._claim_all(sorted(
            ((kv.mod_revision, f) for kv in kvs if kv.mod_revision > since
             and (f := N.derive(self.keys, kv.key, kv.value, kv.mod_revision))),
            key=lambda pair: pair[0]))

    def _targets(self) -> tuple[Notification, ...]:
        try:
            config = self.store.config()
        except StoreError as exc:  # said by every command too; notify nothing meanwhile
            log.warning("notifications: %s", exc)
            return ()
        return config.notifications if config is not None else ()

    def _claim_all(self, facts: list[tuple[int, N.Fact]]) -> None:
        if not facts:
            return
        targets = self._targets()
        for _, fact in facts:
            self._claim(fact, targets)
        if not targets and not self._cursor_kept:
            return
        self._cursor_due = max(self._cursor_due or 0, max(rev for rev, _ in facts))

    def _claim(self, fact: N.Fact, targets: tuple[Notification, ...]) -> None:
        wanted = [n for n in targets if fact.kind in n.events]
        if not wanted:
            return
        key = self.keys.notify_entry(fact.component, fact.revision, fact.name)
        if self.store.etcd.get(key) is not None:
            return  # claimed already (by another host, or by us before a restart)
        entry = None
        if fact.desired is None:
            kv = self.store.etcd.get(self.keys.history_entry(fact.component, fact.revision))
            entry = None if kv is None else _desired(kv)
        event = N.payload(self.store.project, fact, entry)
        record = {"id": event["id"], "event": event, "claimedBy": self.machine,
                  "claimedAt": now_iso(),
                  "targets": {N.target_id(n): {"state": PENDING} for n in wanted}}
        assert self._lease is not None
        result = self.store.etcd.txn(
            [E.absent(key)], [E.Put(key, _dump(record)),
                              E.Put(key + OWNER, _dump({"machine": self.machine}),
                                    self._lease.id)])
        if result.succeeded:
            log.info("notification %s claimed", event["id"])
            self._enqueue(key, record["targets"])

    def _adopt(self, key: str, kv: E.KeyValue | None = None) -> None:
        """Take over the delivery of a record whose owner is gone, if something is pending."""
        kv = kv or self.store.etcd.get(key)
        record = _record(kv)
        if kv is None or record is None:
            return
        pending = [tid for tid, t in record["targets"].items() if t.get("state") == PENDING]
        if not pending:
            return
        assert self._lease is not None
        result = self.store.etcd.txn(
            [E.mod_revision_is(key, kv.mod_revision), E.absent(key + OWNER)],
            [E.Put(key + OWNER, _dump({"machine": self.machine}), self._lease.id)])
        if result.succeeded:
            log.info("notification %s: taking over its delivery (%s claimed it)",
                     record.get("id"), record.get("claimedBy"))
            self._enqueue(key, pending)

    def _adopt_orphans(self) -> None:
        """Records with something pending and no owner (its lease expired unseen)."""
        config = self.store.config()
        if config is None or not config.notifications:
            return  # nothing to send to: what is pending stays so (and is pruned in time)
        for component in config.names:
            kvs, _ = self.store.etcd.get_prefix(self.keys.notify(component))
            owned = {kv.key[:-len(OWNER)] for kv in kvs if kv.key.endswith(OWNER)}
            for kv in kvs:
                if not kv.key.endswith(OWNER) and kv.key not in owned:
                    self._adopt(kv.key, kv)

    def _read_cursor(self) -> int | None:
        record = _record(self.store.etcd.get(self.keys.notify_cursor), "revision")
        if record is None or not isinstance(record["revision"], int):
            return None
        self._cursor_kept = True
        return record["revision"]

    def _write_cursor(self) -> None:
        due = self._cursor_due
        if due is None or time.monotonic() - self._cursor_at < CURSOR_EVERY:
            return
        key = self.keys.notify_cursor
        kv = self.store.etcd.get(key)
        record = _record(kv, "revision")
        if record is None or not isinstance(record["revision"], int) \
                or record["revision"] < due:
            # A lost race means another host moved it meanwhile: no retry needed.
            self.store.etcd.txn([E.mod_revision_is(key, kv.mod_revision if kv else 0)],
                                [E.Put(key, _dump({"revision": due, "at": now_iso()}))])
        self._cursor_due, self._cursor_at = None, time.monotonic()
        self._cursor_kept = True

    # -- delivery --------------------------------------------------------------------------
    def _enqueue(self, key: str, target_ids: Iterable[str]) -> None:
        for tid in target_ids:
            with self._lock:
                if (key, tid) in self._queued:
                    continue
                self._queued.add((key, tid))
                q = self._queues.get(tid)
                if q is None:
                    q = self._queues[tid] = queue.Queue()
                    threading.Thread(target=self._deliver_loop, args=(tid, q), daemon=True,
                                     name=f"notify-{tid}").start()
            q.put(key)

    def _deliver_loop(self, tid: str, q: queue.Queue[str]) -> None:
        """One target's deliveries, in claim order: while it is down, it alone waits."""
        while not self._stop.is_set():
            try:
                key = q.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                self._deliver(key, tid)
            except Exception:  # a bug: the other records of this target must still go
                log.exception("notification %s: delivery failed", key)
            finally:
                with self._lock:
                    self._queued.discard((key, tid))

    def _deliver(self, key: str, tid: str) -> None:
        attempt, etcd_delay, said = 0, ETCD_BACKOFF_START, False
        while not self._stop.is_set():
            try:
                record = self._ours(key, tid)
                if record is None:
                    return  # delivered, pruned, or another host owns it now
                target = next((n for n in self._targets() if N.target_id(n) == tid), None)
                if target is None:
                    self._finish(key, tid, DROPPED, "no longer in the config", attempt)
                    return
                ok, permanent, what = post(target, record["event"])
                attempt += 1
                if ok:
                    self._finish(key, tid, SENT, None, attempt)
                    log.info("notification %s sent to %s (%s)", record["id"],
                             host_of(target.url), what)
                    return
                age = H.seconds_between(record.get("claimedAt", ""), now_iso()) or 0.0
                wait = self.backoff.delay(attempt - 1)
                if permanent or age + wait > self.backoff.give_up:
                    self._finish(key, tid, FAILED, what, attempt)
                    log.warning("notification %s to %s failed: %s (%s)", record["id"],
                                host_of(target.url), what, "refused" if permanent else
                                f"gave up after {attempt} tries")
                    return
                if not said:
                    log.warning("notification %s to %s: %s; retrying", record["id"],
                                host_of(target.url), what)
                    said = True
                self._stop.wait(wait)
            except (E.EtcdError, StoreError) as exc:
                log.debug("notification %s: %s", key, exc)
                self._stop.wait(etcd_delay)
                etcd_delay = min(etcd_delay * 2, ETCD_BACKOFF_MAX)

    def _ours(self, key: str, tid: str) -> dict[str, Any] | None:
        """The record while we own it and `tid` is pending there."""
        record = _record(self.store.etcd.get(key))
        if record is None or record["targets"].get(tid, {}).get("state") != PENDING:
            return None
        owner = self.store.etcd.get(key + OWNER)
        lease = self._lease
        if owner is None or lease is None or owner.lease != lease.id:
            return None
        return record

    def _finish(self, key: str, tid: str, state: str, error: str | None,
                attempts: int) -> None:
        """Record a target's outcome; the owner key goes once nothing is pending."""
        for _ in range(10):
            kv, owner = self.store.etcd.get(key), self.store.etcd.get(key + OWNER)
            record = _record(kv)
            if kv is None or record is None:
                return
            target = record["targets"].get(tid)
            if target is None or target.get("state") != PENDING:
                return
            target.update(state=state, error=error, attempts=attempts, by=self.machine,
                          at=now_iso())
            ops: list[E.Put | E.Delete] = [E.Put(key, _dump(record))]
            guards = [E.mod_revision_is(key, kv.mod_revision),
                      E.created_at(key + OWNER, owner.create_revision if owner else 0)]
            if all(t.get("state") != PENDING for t in record["targets"].values()):
                ops.append(E.Delete(key + OWNER))
            if self.store.etcd.txn(guards, ops).succeeded:
                return


def _record(kv: E.KeyValue | None, field: str = "targets") -> dict[str, Any] | None:
    """A notify record (or the cursor, or the config) as JSON with `field`; None when absent
    or unreadable."""
    if kv is None:
        return None
    try:
        data = json.loads(kv.value)
    except ValueError:
        data = None
    if not isinstance(data, dict) or field not in data:
        log.warning("%s: unreadable (not the JSON expected); ignored", kv.key)
        return None
    return data


def _desired(kv: E.KeyValue) -> Desired | None:
    try:
        return Desired.from_kv(kv)
    except StoreError:
        return None
