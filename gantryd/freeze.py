"""Frozen hosts (hoist's maintenance mode): one etcd key per component,

    projects/<p>/components/<c>/freeze = {"hosts": {"<machine>" or "*": {"reason": text or
                                          null, "actor": "user@host", "since": "..."}}}

written by `gantryd freeze|unfreeze` (guarded on the key's revision, gantryd.guarded); "*"
freezes every host of the component. A frozen host leaves the component alone: no reconcile,
no recover, no health remediation, no slot (an operator works on it by hand). It reports the
status `frozen`; rollouts go on without it and `wait` names it. Unfreezing wakes it (the key's
watch event) and it catches up like any host that is behind.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import etcd as E
from .guarded import change_each
from .store import Store, StoreError, _dump, _field, _load, now_iso
from .history import actor

EVERY_HOST = "*"


@dataclass(frozen=True)
class Hold:
    """Why, by whom and since when a host is frozen."""

    reason: str | None
    actor: str
    since: str

    def describe(self) -> str:
        """`frozen (reason, actor, since)` as `gantryd list` shows it."""
        parts = [p for p in (self.reason, self.actor, self.since) if p]
        return f"frozen ({', '.join(parts)})"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "actor": self.actor, "since": self.since}


@dataclass(frozen=True)
class Freeze:
    """The frozen hosts of one component (machine name or EVERY_HOST -> Hold)."""

    hosts: Mapping[str, Hold] = field(default_factory=dict)
    mod_revision: int = field(default=0, compare=False)  # etcd metadata, not stored

    def of(self, machine: str) -> Hold | None:
        """The hold on `machine` (its own, else the fleet-wide one); None: not frozen."""
        return self.hosts.get(machine) or self.hosts.get(EVERY_HOST)

    def to_json(self) -> dict[str, Any]:
        return {"hosts": {m: hold.to_json() for m, hold in sorted(self.hosts.items())}}

    @classmethod
    def from_kv(cls, kv: E.KeyValue) -> Freeze:
        what = "freeze record"
        hosts = _field(_load(kv, what), kv.key, "hosts", (dict,), what)
        holds = {}
        for machine, data in hosts.items():
            if not isinstance(data, dict):
                raise StoreError(f"{kv.key}: unreadable {what}: hosts.{machine} must be an "
                                 "object")
            holds[machine] = Hold(
                reason=_field(data, kv.key, "reason", (str, type(None)), what, required=False),
                actor=_field(data, kv.key, "actor", (str,), what, required=False, default=""),
                since=_field(data, kv.key, "since", (str,), what, required=False, default=""))
        return cls(holds, mod_revision=kv.mod_revision)


def read(store: Store, component: str) -> Freeze:
    kv = store.etcd.get(store.keys.freeze(component))
    return Freeze() if kv is None else Freeze.from_kv(kv)


def change(store: Store, components: Iterable[str],
           fn: Callable[[Freeze], Freeze]) -> dict[str, Freeze]:
    """Write ``fn(current)`` for every component in ONE guarded transaction."""
    new, revision = change_each(store, components, store.keys.freeze, Freeze.from_kv,
                                lambda current: fn(current or Freeze()),
                                lambda record: _dump(record.to_json()), "freeze record")
    return {c: replace(record, mod_revision=revision) for c, record in new.items()}


def frozen(current: Freeze, machines: Iterable[str], reason: str | None) -> Freeze:
    """`current` with `machines` (none: every host) frozen now, by whoever runs this."""
    hold = Hold(reason, actor(), now_iso())
    return replace(current, hosts={**current.hosts,
                                   **{m: hold for m in (list(machines) or [EVERY_HOST])}})


def thawed(current: Freeze, machines: Iterable[str]) -> Freeze:
    """`current` without the holds on `machines` (none: every hold, fleet-wide included)."""
    names = set(machines)
    return replace(current, hosts={m: h for m, h in current.hosts.items()
                                   if names and m not in names})
