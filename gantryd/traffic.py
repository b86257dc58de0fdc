"""The fleet-wide pause and maintenance of a component: one etcd key per component,

    projects/<p>/components/<c>/traffic = {"paused": {"maxPause": s, "since": "..."} or null,
                                           "maintenance": {"message": text or null} or null,
                                           "actor": "user@host", "at": "..."}

written by `gantryd pause|resume|maintenance` (guarded on the key's revision) and applied by
every `gantryd run` to its proxy routes (gantryd.traffic_sync). No key means "hands off": the
daemons leave the routes as they are, so a local `gantry pause` on a host still works.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from gantry.traffic import Gate

from . import etcd as E
from .history import actor
from .guarded import change_each
from .store import Store, _dump, _field, _load, now_iso  # the store's JSON rules


@dataclass(frozen=True)
class Traffic:
    """The desired traffic state of a component on every host."""

    max_pause: float | None = None  # paused (each held connection at most this long) or None
    paused_since: str = ""
    maintenance: bool = False
    message: str | None = None
    actor: str = ""
    at: str = ""
    mod_revision: int = field(default=0, compare=False)  # etcd metadata, not stored

    @property
    def gate(self) -> Gate:
        return Gate(paused=self.max_pause, maintenance=self.maintenance,
                    message=self.message if self.maintenance else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "paused": None if self.max_pause is None else {"maxPause": self.max_pause,
                                                           "since": self.paused_since},
            "maintenance": {"message": self.message} if self.maintenance else None,
            "actor": self.actor, "at": self.at,
        }

    @classmethod
    def from_kv(cls, kv: E.KeyValue) -> Traffic:
        what = "traffic state"
        data = _load(kv, what)
        paused = _field(data, kv.key, "paused", (dict, type(None)), what, required=False)
        maint = _field(data, kv.key, "maintenance", (dict, type(None)), what, required=False)
        max_pause = None
        if paused is not None:
            max_pause = float(_field(paused, kv.key, "maxPause", (int, float), what))
        return cls(
            max_pause=max_pause,
            paused_since=_field(paused or {}, kv.key, "since", (str,), what, required=False,
                                default=""),
            maintenance=maint is not None,
            message=_field(maint or {}, kv.key, "message", (str, type(None)), what,
                           required=False),
            actor=_field(data, kv.key, "actor", (str,), what, required=False, default=""),
            at=_field(data, kv.key, "at", (str,), what, required=False, default=""),
            mod_revision=kv.mod_revision)


def read(store: Store, component: str) -> Traffic | None:
    kv = store.etcd.get(store.keys.traffic(component))
    return None if kv is None else Traffic.from_kv(kv)


def change(store: Store, components: Iterable[str],
           fn: Callable[[Traffic | None], Traffic]) -> dict[str, Traffic]:
    """Write ``fn(current)`` for every component in ONE transaction, guarded on each key's
    mod_revision (0: absent); a lost race re-reads and calls ``fn`` again."""
    new, revision = change_each(
        store, components, store.keys.traffic, Traffic.from_kv,
        lambda current: replace(fn(current), actor=actor(), at=now_iso()),
        lambda record: _dump(record.to_json()), "traffic state")
    return {c: replace(record, mod_revision=revision) for c, record in new.items()}


def paused(current: Traffic | None, max_pause: float) -> Traffic:
    """``current`` with the pause on (a pause already on keeps its start)."""
    current = current or Traffic()
    since = current.paused_since if current.max_pause is not None else now_iso()
    return replace(current, max_pause=max_pause, paused_since=since)


def resumed(current: Traffic | None) -> Traffic:
    return replace(current or Traffic(), max_pause=None, paused_since="")


def in_maintenance(current: Traffic | None, enabled: bool, message: str | None) -> Traffic:
    return replace(current or Traffic(), maintenance=enabled,
                   message=message if enabled else None)
