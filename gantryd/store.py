"""Typed reads and writes of a project's fleet state in etcd.

Every write that depends on a read is a transaction guarded by the key's mod_revision (no
blind overwrites); a lost race re-reads and retries, or reports the conflict. Values written
by hand that cannot be read give a StoreError naming the key and what is wrong.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from gantry.config import Component, Config, ConfigError, parse_config

from . import etcd as E
from .keys import DEFAULT_PREFIX, Keys

log = logging.getLogger(__name__)

STATUSES = ("ready", "stopped", "killed")  # desired
MACHINE_STATUSES = ("pulling", "waiting", "updating", "ready", "failed", "stopping", "stopped",
                    "killed", "canary", "halted", "idle", "unhealthy", "restarting", "frozen")
# Slot pools: rollout (switch) slots under lock/, pull slots under pulls/; the events of a
# pull slot are the same kinds with this prefix ("pull-acquired"...).
SWITCH, PULL = "lock", "pulls"
EVENT_PREFIX = {SWITCH: "", PULL: "pull-"}
# History entries, done markers and event groups kept per component, unless the pinned
# component says otherwise (rollout.keepRevisions).
KEEP_REVISIONS = 100


class StoreError(Exception):
    """Fleet state in etcd is missing, unreadable, or changed under our feet."""


class Conflict(StoreError):
    """A guarded write lost a race too many times."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _load(kv: E.KeyValue, what: str) -> dict[str, Any]:
    try:
        data = json.loads(kv.value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{kv.key}: unreadable {what} (not JSON: {exc}); write it with gantryd "
                         f"or delete it (etcdctl del {kv.key})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{kv.key}: unreadable {what} (expected a JSON object)")
    return data


def _field(data: Mapping[str, Any], key: str, name: str, kinds: tuple, what: str,
           required: bool = True, default: Any = None) -> Any:
    if name not in data:
        if required:
            raise StoreError(f"{key}: unreadable {what}: missing {name!r}")
        return default
    value = data[name]
    # bool is an int in Python: never accept it where a number is meant.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise StoreError(f"{key}: unreadable {what}: {name!r} must be {names}, not {value!r}")
    return value


def _canary(data: Mapping[str, Any], key: str, what: str) -> int | None:
    percent = _field(data, key, "canary", (int, type(None)), what, required=False)
    if percent is not None and not 1 <= percent <= 99:
        raise StoreError(f"{key}: unreadable {what}: canary must be 1-99, not {percent}")
    if percent is not None and not isinstance(data.get("previous"), dict):
        raise StoreError(f"{key}: unreadable {what}: a canary needs 'previous'")
    return percent


@dataclass(frozen=True)
class Halt:
    """A rollout stopped fleet-wide because `machine` failed at desired `revision`."""

    machine: str
    error: str
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "error": self.error, "revision": self.revision}


def _halt(data: Mapping[str, Any], key: str, name: str, what: str) -> Halt | None:
    value = _field(data, key, name, (dict, type(None)), what, required=False)
    if value is None:
        return None
    return Halt(_field(value, key, "machine", (str,), name),
                _field(value, key, "error", (str,), name),
                _field(value, key, "revision", (int,), name))


@dataclass(frozen=True)
class Desired:
    """The desired state of a component, pinned at `gantryd update` (or stop/kill) time.

    `component` is the component's config snapshot: hosts deploy exactly what was pinned,
    so a later `setconfig` changes nothing until the next `update`.
    """

    status: str
    revision: int
    image: str | None = None
    config_hash: str | None = None
    component: Mapping[str, Any] | None = None
    updated_at: str = ""
    halted: Halt | None = None
    # A weighted canary of `image` (gantryd/split.py): its percentage of new connections on
    # every host, and the stable side it splits with ({"image", "configHash", "component",
    # "revision"} of the desired state before), which `abort` goes back to.
    canary: int | None = None
    previous: Mapping[str, Any] | None = None
    # The record (gantryd/history.py): who wrote it, why (update, rollback, auto-revert,
    # stop, kill, promote, abort), the revision a rollback re-pinned, and for an auto-revert
    # the failure it answers.
    actor: str = ""
    cause: str = ""
    source: int | None = None
    reverted: Halt | None = None
    mod_revision: int = field(default=0, compare=False)  # etcd metadata, not stored

    @property
    def max_parallel(self) -> int:
        return self.model().rollout.max_parallel if self.component else 1

    @property
    def max_parallel_pulls(self) -> int | None:
        """Pull slots (None: pulls are not limited)."""
        return self.model().rollout.max_parallel_pulls if self.component else None

    @property
    def keep_revisions(self) -> int:
        # Read leniently (no full parse on every write): the snapshot was validated when
        # pinned, and a bad value must not block a write.
        keep = ((self.component or {}).get("rollout") or {}).get("keepRevisions")
        return keep if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1 \
            else KEEP_REVISIONS

    @property
    def is_halted(self) -> bool:
        return self.halted is not None and self.halted.revision == self.revision

    def model(self) -> Component:
        """The pinned component config as gantry's model."""
        if self.component is None:
            raise StoreError("the desired state holds no component config")
        try:
            return parse_config({"components": [dict(self.component)]},
                                "desired state").components[0]
        except ConfigError as exc:
            raise StoreError(f"the pinned component config is invalid: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status, "revision": self.revision, "image": self.image,
            "configHash": self.config_hash, "component": self.component,
            "updatedAt": self.updated_at,
            "halted": self.halted.to_json() if self.halted else None,
            "canary": self.canary, "previous": self.previous,
            "actor": self.actor, "cause": self.cause, "source": self.source,
            "reverted": self.reverted.to_json() if self.reverted else None,
        }

    @classmethod
    def from_kv(cls, kv: E.KeyValue) -> "Desired":
        what = "desired state"
        data = _load(kv, what)
        status = _field(data, kv.key, "status", (str,), what)
        if status not in STATUSES:
            raise StoreError(f"{kv.key}: unreadable {what}: status must be one of "
                             f"{', '.join(STATUSES)}, not {status!r}")
        revision = _field(data, kv.key, "revision", (int,), what)
        image = _field(data, kv.key, "image", (str, type(None)), what, required=False)
        if status == "ready" and not image:
            raise StoreError(f"{kv.key}: unreadable {what}: status ready needs an image")
        return cls(
            status=status, revision=revision, image=image,
            config_hash=_field(data, kv.key, "configHash", (str, type(None)), what,
                               required=False),
            component=_field(data, kv.key, "component", (dict, type(None)), what,
                             required=False),
            updated_at=_field(data, kv.key, "updatedAt", (str,), what, required=False,
                              default=""),
            halted=_halt(data, kv.key, "halted", what), canary=_canary(data, kv.key, what),
            previous=_field(data, kv.key, "previous", (dict, type(None)), what, required=False),
            actor=_field(data, kv.key, "actor", (str,), what, required=False, default=""),
            cause=_field(data, kv.key, "cause", (str,), what, required=False, default=""),
            source=_field(data, kv.key, "source", (int, type(None)), what, required=False),
            reverted=_halt(data, kv.key, "reverted", what),
            mod_revision=kv.mod_revision)


@dataclass(frozen=True)
class MachineStatus:
    """What one host reports about one component (its key lives on the host's lease)."""

    machine: str
    status: str
    revision: int = 0  # the desired revision this report is about
    image: str | None = None
    config_hash: str | None = None
    since: str = ""
    error: str | None = None
    canary_revision: int | None = None  # desired revision when a canary was first seen
    split_percent: int | None = None  # status "split": the canary's share (gantryd/split.py)
    split_image: str | None = None  # status "split": the canary's image
    traffic: tuple[str, ...] = ()  # "paused", "maintenance": what the host's routes do
    retained: tuple[str, ...] = ()  # images kept on the host for a rollback (retainImages)

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "status": self.status, "revision": self.revision,
                "image": self.image, "configHash": self.config_hash, "since": self.since,
                "error": self.error, "canaryRevision": self.canary_revision,
                "splitPercent": self.split_percent, "splitImage": self.split_image,
                "traffic": list(self.traffic), "retained": list(self.retained)}

    @classmethod
    def from_kv(cls, kv: E.KeyValue) -> "MachineStatus":
        what = "host status"
        data = _load(kv, what)
        opt = (str, type(None))
        return cls(
            machine=_field(data, kv.key, "machine", (str,), what),
            status=_field(data, kv.key, "status", (str,), what),
            revision=_field(data, kv.key, "revision", (int,), what, required=False, default=0),
            image=_field(data, kv.key, "image", opt, what, required=False),
            config_hash=_field(data, kv.key, "configHash", opt, what, required=False),
            since=_field(data, kv.key, "since", (str,), what, required=False, default=""),
            error=_field(data, kv.key, "error", opt, what, required=False),
            canary_revision=_field(data, kv.key, "canaryRevision", (int, type(None)), what,
                                   required=False),
            split_percent=_field(data, kv.key, "splitPercent", (int, type(None)), what,
                                 required=False),
            split_image=_field(data, kv.key, "splitImage", opt, what, required=False),
            traffic=tuple(str(t) for t in _field(data, kv.key, "traffic", (list,), what,
                                                 required=False, default=[])),
            retained=tuple(str(r) for r in _field(data, kv.key, "retained", (list,), what,
                                                  required=False, default=[])))


@dataclass(frozen=True)
class Event:
    """One rollout event; `etcd_revision` orders events fleet-wide."""

    kind: str  # acquired | released | failed | halted | lost (pull slots: pull-acquired...)
    machine: str
    revision: int
    slot: int | None = None
    detail: str | None = None
    at: str = ""
    etcd_revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "machine": self.machine, "revision": self.revision,
                "slot": self.slot, "detail": self.detail, "at": self.at}

    @classmethod
    def from_kv(cls, kv: E.KeyValue) -> "Event":
        data = _load(kv, "event")
        return cls(kind=str(data.get("kind")), machine=str(data.get("machine")),
                   revision=int(data.get("revision") or 0), slot=data.get("slot"),
                   detail=data.get("detail"), at=str(data.get("at") or ""),
                   etcd_revision=kv.mod_revision)


@dataclass(frozen=True)
class Line:
    """The waiters before a host and the rollout slots held, as read (gantryd/slot_queue.py)."""

    ahead: frozenset[str]
    held: frozenset[str]
    waiters_revision: int
    slots_revision: int


@dataclass(frozen=True)
class Slot:
    """A rollout slot held by this host: the lock key and its create revision."""

    component: str
    index: int
    key: str
    create_revision: int
    revision: int  # desired revision it was taken for
    pool: str = SWITCH


class Store:
    """Fleet state of one project."""

    def __init__(self, etcd: E.Etcd, project: str, prefix: str = DEFAULT_PREFIX):
        self.etcd = etcd
        self.keys = Keys(project, prefix)
        self.project = project

    # -- config ----------------------------------------------------------------------------
    def config(self) -> Config | None:
        kv = self.etcd.get(self.keys.config)
        if kv is None:
            return None
        try:
            return parse_config(_load(kv, "config"), f"etcd:{kv.key}")
        except ConfigError as exc:
            raise StoreError(f"{kv.key}: invalid config stored:\n{exc}") from None

    def config_json(self) -> dict[str, Any] | None:
        kv = self.etcd.get(self.keys.config)
        return None if kv is None else _load(kv, "config")

    def require_config(self) -> Config:
        config = self.config()
        if config is None:
            raise StoreError(f"project {self.project} has no configuration; "
                             f"store one with: gantryd setconfig {self.project} FILE")
        return config

    def set_config(self, config: Config,
                   audit: Callable[[E.KeyValue | None], list[E.Put | E.Delete]] | None = None
                   ) -> int:
        """Store a validated config; guarded on the revision read (no blind overwrite).

        `audit(previous)` adds writes to the same transaction (gantryd/revisions.py)."""
        for _ in range(5):
            kv = self.etcd.get(self.keys.config)
            guard = E.mod_revision_is(self.keys.config, kv.mod_revision if kv else 0)
            ops = [E.Put(self.keys.config, _dump(config.to_dict())), *(audit(kv) if audit else ())]
            result = self.etcd.txn([guard], ops)
            if result.succeeded:
                return result.revision
        raise Conflict(f"{self.keys.config} keeps changing; try again")

    # -- desired state ---------------------------------------------------------------------
    def desired(self, component: str) -> Desired | None:
        kv = self.etcd.get(self.keys.desired(component))
        return None if kv is None else Desired.from_kv(kv)

    def change_desired(self, components: Iterable[str],
                       change: Callable[[str, Desired | None], Desired]) -> dict[str, Desired]:
        """Write `change(component, current)` for every component in ONE transaction.

        Guarded on every desired key's mod_revision; on a lost race everything is re-read
        and `change` is called again. Also records history and prunes old history/events.
        """
        components = list(dict.fromkeys(components))
        for _ in range(10):
            current = {c: self.desired(c) for c in components}
            new = {c: change(c, current[c]) for c in components}
            guards, ops = [], []
            for c in components:
                key = self.keys.desired(c)
                guards.append(E.mod_revision_is(key, current[c].mod_revision if current[c] else 0))
                value = _dump(new[c].to_json())
                ops.append(E.Put(key, value))
                ops.append(E.Put(self.keys.history_entry(c, new[c].revision), value))
                oldest = new[c].revision - new[c].keep_revisions + 1  # the oldest kept
                if oldest > 1:
                    ops.append(E.Delete(self.keys.history(c),
                                        end=self.keys.history_entry(c, oldest)))
                    ops.append(E.Delete(self.keys.done(c), end=self.keys.done_entry(c, oldest)))
                    ops.append(E.Delete(self.keys.events(c), end=self.keys.events_of(c, oldest)))
                    ops.append(E.Delete(self.keys.notify(c), end=self.keys.notify_of(c, oldest)))
            result = self.etcd.txn(guards, ops)
            if result.succeeded:
                return {c: replace(new[c], mod_revision=result.revision) for c in components}
            log.debug("desired state of %s changed meanwhile; retrying", components)
        raise Conflict(f"the desired state of {', '.join(components)} keeps changing; try again")

    def halt(self, component: str, seen: Desired, machine: str, error: str) -> bool:
        """Halt the rollout of `seen.revision` fleet-wide, unless the desired state moved on.

        Answers whether this call halted it. The first failure wins; the event is recorded.
        """
        key = self.keys.desired(component)
        for _ in range(5):
            current = self.desired(component)
            if current is None or current.revision != seen.revision or current.is_halted:
                return False
            halted = replace(current, halted=Halt(machine, error, current.revision))
            event = Event("halted", machine, current.revision, detail=error, at=now_iso())
            result = self.etcd.txn([E.mod_revision_is(key, current.mod_revision)],
                                   [E.Put(key, _dump(halted.to_json())),
                                    self._event_put(component, event)])
            if result.succeeded:
                return True
        return False

    def history(self, component: str) -> list[Desired]:
        kvs, _ = self.etcd.get_prefix(self.keys.history(component))
        return [Desired.from_kv(kv) for kv in kvs]

    # -- host status -----------------------------------------------------------------------
    def machines(self, component: str) -> list[MachineStatus]:
        kvs, _ = self.etcd.get_prefix(self.keys.machines(component))
        return [MachineStatus.from_kv(kv) for kv in kvs]

    def machine(self, component: str, machine: str) -> MachineStatus | None:
        kv = self.etcd.get(self.keys.machine(component, machine))
        return None if kv is None else MachineStatus.from_kv(kv)

    def put_machine(self, component: str, status: MachineStatus, lease: int) -> None:
        # The key belongs to this host alone (one daemon per machine name), so a plain put
        # is no blind overwrite of anyone else's data.
        self.etcd.put(self.keys.machine(component, status.machine), _dump(status.to_json()),
                      lease=lease)

    # -- rollout slots ---------------------------------------------------------------------
    def holders(self, component: str, pool: str = SWITCH) -> list[tuple[int, str, int]]:
        """(slot, machine, lease) of every held slot of `pool`."""
        kvs, _ = self.etcd.get_prefix(self.keys.slots(component, pool))
        out = []
        for kv in kvs:
            data = _load(kv, "lock")
            try:
                slot = int(kv.key.rsplit("/", 1)[1])
            except ValueError:
                raise StoreError(f"{kv.key}: unreadable lock key (slot must be a number)") from None
            out.append((slot, str(data.get("machine", "?")), kv.lease))
        return out

    def acquire_slot(self, component: str, desired: Desired, machine: str,
                     lease: int, pool: str = SWITCH, detail: str | None = None) -> Slot | None:
        """Take a free slot among `desired.max_parallel` (pool PULL: `max_parallel_pulls`)
        for `desired` (None: all busy). `detail` goes into the `acquired` event (why).

        The lock key is created only if absent (create_revision == 0) and only while the
        desired key is unchanged, attached to `lease` so a crashed holder's slot expires.
        Raises StoreError when the desired state changed (the caller must re-read).
        """
        desired_key = self.keys.desired(component)
        limit = desired.max_parallel if pool == SWITCH else desired.max_parallel_pulls
        # One read of the slot keys: a waiting host asks again on every release fleet-wide,
        # so busy slots must cost nothing (not a failed txn and two reads each).
        held = {kv.key: kv for kv in self.etcd.get_prefix(self.keys.slots(component, pool))[0]}
        for index in range(limit or 0):
            key = self.keys.lock(component, index, pool)
            kv = held.get(key)
            if kv is not None:
                if kv.lease == lease:  # ours already: a retried request went through
                    return Slot(component, index, key, kv.create_revision, desired.revision,
                                pool)
                continue
            event = Event(EVENT_PREFIX[pool] + "acquired", machine, desired.revision,
                          slot=index, detail=detail, at=now_iso())
            # Taking a rollout slot also takes this host out of the queue of waiters.
            leave = [E.Delete(self.keys.waiter(component, machine))] if pool == SWITCH else []
            result = self.etcd.txn(
                [E.absent(key), E.mod_revision_is(desired_key, desired.mod_revision)],
                [E.Put(key, _dump({"machine": machine, "revision": desired.revision}), lease),
                 self._event_put(component, event), *leave])
            if result.succeeded:
                return Slot(component, index, key, result.revision, desired.revision, pool)
            kv = self.etcd.get(key)
            if kv is not None and kv.lease == lease:
                # Ours already: a retried request whose first attempt went through.
                return Slot(component, index, key, kv.create_revision, desired.revision, pool)
            current = self.desired(component)
            if current is None or current.mod_revision != desired.mod_revision:
                raise StoreError("the desired state changed")
        current = self.desired(component)  # every slot busy: still the same rollout?
        if current is None or current.mod_revision != desired.mod_revision:
            raise StoreError("the desired state changed")
        return None

    # -- the hosts waiting for a rollout slot, in order (gantryd/slot_queue.py) ------------
    def join_queue(self, component: str, machine: str, lease: int) -> Line | None:
        """Put this host's waiter key on `lease` (a key already there keeps its place) and
        read the line: the waiters before it and the rollout slots held (None when our key
        went meanwhile: its lease expired)."""
        key = self.keys.waiter(component, machine)
        self.etcd.put(key, machine.encode(), lease=lease)
        kvs, waiters_revision = self.etcd.get_prefix(self.keys.waiters(component))
        own = next((kv.create_revision for kv in kvs if kv.key == key), None)
        if own is None:
            return None
        slots, slots_revision = self.etcd.get_prefix(self.keys.locks(component))
        return Line(ahead=frozenset(kv.key for kv in kvs if kv.create_revision < own),
                    held=frozenset(kv.key for kv in slots), waiters_revision=waiters_revision,
                    slots_revision=slots_revision)

    def leave_queue(self, component: str, machine: str) -> None:
        self.etcd.delete(self.keys.waiter(component, machine))

    def release_slot(self, slot: Slot, machine: str, outcome: str = "released",
                     detail: str | None = None) -> bool:
        """Free a slot we hold; answers False (and records `lost`) if it had expired."""
        prefix = EVENT_PREFIX[slot.pool]
        event = Event(prefix + outcome, machine, slot.revision, slot=slot.index, detail=detail,
                      at=now_iso())
        lost = replace(event, kind=prefix + "lost", detail="the slot had expired (lease lost)")
        result = self.etcd.txn([E.created_at(slot.key, slot.create_revision)],
                               [E.Delete(slot.key), self._event_put(slot.component, event)],
                               [self._event_put(slot.component, lost)])
        return result.succeeded

    # -- events ----------------------------------------------------------------------------
    def _event_put(self, component: str, event: Event) -> E.Put:
        key = self.keys.events_of(component, event.revision) + uuid.uuid4().hex[:12]
        return E.Put(key, _dump(event.to_json()))

    def record(self, component: str, event: Event) -> None:
        self.etcd.txn([], [self._event_put(component, event)])

    def events(self, component: str) -> list[Event]:
        """Every kept event, in the order etcd applied them."""
        kvs, _ = self.etcd.get_prefix(self.keys.events(component))
        return sorted((Event.from_kv(kv) for kv in kvs), key=lambda e: e.etcd_revision)

    # -- watching --------------------------------------------------------------------------
    def watch(self, callback: Callable[[E.WatchBatch], None], start_revision: int | None = None,
              on_state: Callable[[bool], None] | None = None) -> E.Watch:
        """Watch every key of the project."""
        return self.etcd.watch_prefix(self.keys.root, callback, start_revision, on_state)
