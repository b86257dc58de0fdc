"""``gantryd history PROJECT [-c COMP...] [-n N] [--json]`` and ``gantryd rollback PROJECT -c COMP
[--to REVISION]``: the record of every revision, and the way back (gantryd/history.py)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from gantry.errors import GantryError

from .. import history as H
from .. import revisions
from ..store import Desired, Store


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("history", "every kept revision: when, who, why, image, config, outcome")
    components(p, required=False)
    p.add_argument("-n", dest="limit", type=int, default=None, metavar="N",
                   help="the last N revisions of each component")
    p.add_argument("--json", action="store_true", help="machine-readable, with per-host times")
    p = command("rollback", "re-pin an earlier revision's image and config as a new revision "
                            "(default: the last stable one before the current)")
    components(p)
    p.add_argument("--to", type=int, default=None, metavar="REVISION",
                   help="the revision to go back to (see `gantryd history`)")
    p.add_argument("--docker", default=None,
                   help="Docker engine URL to ask the registry (default: environment)")


def _short(label: str) -> str:
    """`repo:tag@sha256:<12 hex>` for the table (--json has it all)."""
    head, sep, digest = label.partition("@sha256:")
    return f"{head}@sha256:{digest[:12]}" if sep else label


def _changes(entry: dict[str, Any]) -> str:
    parts = [f"{what} {', '.join(entry.get(what) or ())}"
             for what in ("added", "changed", "removed") if entry.get(what)]
    return "; ".join(parts) or "no component changed"


def cmd_history(args: argparse.Namespace, store: Store) -> int:
    from tabulate import tabulate
    names = list(args.components or store.require_config().names)
    out = {}
    for name in names:
        out[name] = H.rows(store.history(name), store.desired(name),
                           revisions.done(store, name), store.events(name), args.limit)
    log = [e for e in revisions.config_log(store) if not args.components or set(names) & {
        n for what in ("added", "changed", "removed") for n in e.get(what) or ()}]
    if args.json:
        print(json.dumps({"components": out, "config": log}, indent=2))
        return 0
    table = [[name, f"r{r['revision']}", r["at"], r["actor"], r["cause"], _short(r["image"]),
              r["configHash"] or "-", r["outcome"]] for name, rows in out.items() for r in rows]
    print(tabulate(table, headers=["COMPONENT", "REV", "TIME", "ACTOR", "CAUSE", "IMAGE",
                                   "CONFIG", "OUTCOME"]) if table else "(no revisions)")
    if log:
        print()
        print(tabulate([[e.get("at"), e.get("actor"), f"v{e.get('version')}", _changes(e)]
                        for e in log[-(args.limit or len(log)):]],
                       headers=["CONFIG CHANGED", "ACTOR", "VERSION", "COMPONENTS"]))
    return 0


def _missing(store: Store, name: str, image: str, docker_url: str | None) -> str | None:
    """Why hosts could not run `image` (None: the registry has it, or every live host keeps
    it: retainImages)."""
    from gantry.runtime import Runtime, connect
    try:
        client = connect(docker_url)
        try:
            if Runtime(client).registry_has(image):
                return None
        finally:
            client.close()
    except GantryError:  # no Docker here: the hosts' retained images must do
        pass
    hosts = store.machines(name)
    lacking = [m.machine for m in hosts if image not in m.retained]
    if hosts and not lacking:
        return None
    where = f"; not retained on {', '.join(lacking)}" if hosts else "; no live host keeps it"
    return f"image {image} is not in the registry{where}"


def cmd_rollback(args: argparse.Namespace, store: Store) -> int:
    if args.to is not None and len(args.components) > 1:
        print("gantryd rollback: error: --to goes with one component", file=sys.stderr)
        return 2
    config = store.require_config()
    plans: dict[str, tuple[Desired, Desired]] = {}
    for name in args.components:
        config.component(name)  # an unknown one: exit 2 with a did-you-mean
        current = store.desired(name)
        if current is None:
            print(f"gantryd: {name}: never updated, nothing to roll back", file=sys.stderr)
            return 1
        target = H.rollback_target(store.history(name), revisions.done(store, name), current,
                                   args.to)
        problem = _missing(store, name, target.image or "", args.docker)
        if problem is not None:
            print(f"gantryd: {name}: cannot roll back to revision {target.revision}: "
                  f"{problem}", file=sys.stderr)
            return 1
        plans[name] = (current, target)

    def change(name: str, current: Desired | None) -> Desired:
        seen, target = plans[name]
        H.expect(name, seen, current, "rollback")
        assert current is not None
        return H.repin(target, current, H.ROLLBACK, H.actor())
    for name, desired in store.change_desired(args.components, change).items():
        print(f"Component {name} -> rollback to revision {desired.source}: {desired.image} "
              f"(revision {desired.revision})")
    return 0


COMMANDS = {"history": cmd_history, "rollback": cmd_rollback}
