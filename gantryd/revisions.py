"""The etcd side of the fleet history (the rules are gantryd/history.py): a component's kept
revisions and done markers, marking a revision done, a host's failure (halt or auto-revert),
and the audit of `setconfig`.

```
components/<c>/history/<revision>   the desired state of each revision (Store.change_desired)
components/<c>/done/<revision>      {"revision", "at", "seconds"}: every live host reached it
configlog/<version>                 {"actor", "at", "version", "added", "removed", "changed"}
```
All pruned: history and done markers with the revisions (`rollout.keepRevisions`), the
config log to the last CONFIG_LOG_KEEP changes.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from gantry.config import Config

from . import etcd as E
from . import history as H
from . import rollout as R
from .store import Desired, Event, Halt, Store, StoreError, _dump, _load, now_iso

log = logging.getLogger(__name__)

CONFIG_LOG_KEEP = 100


class _Moved(Exception):
    """The desired state moved on from the revision that failed: nothing to do."""


def done(store: Store, component: str) -> dict[int, H.Done]:
    kvs, _ = store.etcd.get_prefix(store.keys.done(component))
    out = {}
    for kv in kvs:
        marker = H.Done.from_json(_load(kv, "done marker"))
        out[marker.revision] = marker
    return out


def mark_done(store: Store, component: str, revision: int | None = None) -> bool:
    """Record that every live host reached `revision` (default: the desired one), if it is
    still the desired one and they all did. Written once (the key must be absent): the host
    that completes a rollout writes it; any other that sees it complete (`wait` too) may race
    it harmlessly."""
    desired = store.desired(component)
    if desired is None or desired.revision != (revision or desired.revision) \
            or desired.is_halted:
        return False
    if not R.progress(desired, store.machines(component)).done:
        return False
    key = store.keys.done_entry(component, desired.revision)
    at = now_iso()
    marker = H.Done(desired.revision, at, H.seconds_between(desired.updated_at, at))
    result = store.etcd.txn(
        [E.absent(key), E.mod_revision_is(store.keys.desired(component), desired.mod_revision)],
        [E.Put(key, _dump(marker.to_json()))])
    return result.succeeded


def fail(store: Store, component: str, seen: Desired, machine: str, error: str) -> str | None:
    """`machine` failed on revision `seen`: halt the rollout fleet-wide, or with
    `rollout.onFailure: rollback` write an auto-revert to the last stable revision (a new
    revision, in one guarded transaction). First failure wins; answers "halted",
    "reverted", or None when another failure (or a newer revision) came first."""
    try:
        policy = seen.model().rollout.on_failure
    except StoreError:  # no (readable) snapshot: the plain rule
        policy = "halt"
    target = None
    if H.reverts(policy, seen):
        target = H.last_stable(store.history(component), done(store, component), seen)
        if target is None:
            error += " (no stable revision to revert to: halted)"
    if target is None:
        return "halted" if store.halt(component, seen, machine, error) else None

    def change(_: str, current: Desired | None) -> Desired:
        if current is None or current.revision != seen.revision or current.is_halted:
            raise _Moved
        return H.repin(target, current, H.AUTO_REVERT, f"gantryd@{machine}",
                       reverted=Halt(machine, error, current.revision))
    try:
        store.change_desired([component], change)
    except _Moved:
        return None
    # The revert's own record holds the failure; this event puts it in the rollout's log.
    store.record(component, Event("halted", machine, seen.revision, at=now_iso(),
                                  detail=f"{error} (auto-revert to r{target.revision})"))
    return "reverted"


# -- setconfig audit -----------------------------------------------------------------------------

def set_config(store: Store, config: Config) -> int:
    """`Store.set_config` with its audit entry in the same transaction."""
    new = config.to_dict()

    def audit(previous: E.KeyValue | None) -> list[E.Put | E.Delete]:
        old = _load(previous, "config") if previous is not None else None
        version = (previous.version if previous is not None else 0) + 1
        entry = {"version": version, "actor": H.actor(), "at": now_iso(),
                 **H.config_changes(old, new)}
        ops: list[E.Put | E.Delete] = [E.Put(store.keys.config_log_entry(version),
                                             _dump(entry))]
        if version > CONFIG_LOG_KEEP:
            ops.append(E.Delete(store.keys.config_log,
                                end=store.keys.config_log_entry(version - CONFIG_LOG_KEEP + 1)))
        return ops
    return store.set_config(config, audit=audit)


def config_log(store: Store) -> list[dict[str, Any]]:
    """The kept config changes, oldest first."""
    kvs, _ = store.etcd.get_prefix(store.keys.config_log)
    out = []
    for kv in kvs:
        try:
            out.append(json.loads(kv.value))
        except ValueError:
            raise StoreError(f"{kv.key}: unreadable config log entry") from None
    return out



def report(store: Store, names: list[str], limit: int | None = None,
           only: bool = False) -> dict[str, Any]:
    """The document of `gantryd history --json` (and of the API's history): per component
    its revisions, newest first (at most `limit`), and the config log (with `only`, the
    changes that touched one of `names`)."""
    out = {name: H.rows(store.history(name), store.desired(name), done(store, name),
                        store.events(name), limit) for name in names}
    log = [e for e in config_log(store) if not only or set(names) & {
        n for what in ("added", "changed", "removed") for n in e.get(what) or ()}]
    return {"components": out, "config": log}
