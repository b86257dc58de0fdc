"""``gantryd history PROJECT [-c COMP...] [-n N] [--json]`` and ``gantryd rollback PROJECT -c COMP
[--to REVISION]``: the record of every revision, and the way back (gantryd/history.py)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


from .. import deploy, revisions
from ..store import Store


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
    doc = revisions.report(store, names, args.limit, only=bool(args.components))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    out, log = doc["components"], doc["config"]
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


def cmd_rollback(args: argparse.Namespace, store: Store) -> int:
    if args.to is not None and len(args.components) > 1:
        print("gantryd rollback: error: --to goes with one component", file=sys.stderr)
        return 2
    try:
        done = deploy.rollback(store, args.components, to=args.to, docker_url=args.docker)
    except deploy.DeployError as exc:
        print(f"gantryd: {exc}", file=sys.stderr)
        return 1
    for name, desired in done.desired.items():
        print(f"Component {name} -> rollback to revision {desired.source}: {desired.image} "
              f"(revision {desired.revision})")
    return 0


COMMANDS = {"history": cmd_history, "rollback": cmd_rollback}
