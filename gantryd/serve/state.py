"""The fleet as documents: which projects there are, and everything about one project
(desired state, every host, slots, halt, progress), as the API answers it and the web page
draws it. Read-only; one etcd read per record kind."""
from __future__ import annotations

from typing import Any

from .. import etcd as E
from .. import history as H
from .. import revisions, rollout, split
from ..commands.listing import snapshot
from ..follow import pinned_tags, version_label
from ..keys import normalize_prefix
from ..store import PULL, SWITCH, Store


def projects(etcd: E.Etcd, prefix: str) -> list[str]:
    """Every project with a stored config, sorted."""
    root = normalize_prefix(prefix) + "/projects/"
    names = set()
    for key in etcd.get_keys(root):
        project, _, rest = key[len(root):].partition("/")
        if rest == "config":
            names.add(project)
    return sorted(names)


def component_state(store: Store, name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """One component: `doc` (its part of `gantryd list --json`) plus status, progress, slots
    and a readable version per host."""
    desired = store.desired(name)
    machines = store.machines(name)
    tags = pinned_tags(store.history(name))
    progress = rollout.progress(desired, machines)
    status = "-" if desired is None else (
        "halted" if desired.is_halted else split.desired_status(desired))
    for m, out in zip(machines, doc["machines"], strict=True):
        out["version"] = version_label(m.image, tags)
        out["current"] = desired is not None and rollout.host_done(desired, m)
    done = revisions.done(store, name)
    return {
        **doc,
        "name": name,
        "status": status,
        "version": version_label(desired.image if desired else None, tags),
        "cause": H.cause_of(desired) if desired else None,
        "halted": desired.halted.to_json() if desired is not None and desired.is_halted
        else None,
        "progress": {"done": progress.done,
                     "failed": ({"machine": progress.failed[0], "error": progress.failed[1]}
                                if progress.failed else None),
                     "pending": list(progress.pending), "canaries": list(progress.canaries),
                     "frozen": list(progress.frozen)},
        "slots": [{"pool": pool, "slot": slot, "machine": machine}
                  for pool in (SWITCH, PULL) for slot, machine, _ in store.holders(name, pool)],
        "lastDone": done[max(done)].to_json() if done else None,
    }


def component_doc(store: Store, name: str) -> dict[str, Any]:
    """One component as `project_state` shows it."""
    docs, _, _ = snapshot(store, [name])
    return component_state(store, name, docs[name])


def project_state(store: Store) -> dict[str, Any]:
    """The whole project: `{"project", "components": [component_state...]}` in config
    order (StoreError when it has no config)."""
    return {"project": store.project,
            "components": [component_doc(store, n) for n in store.require_config().names]}
