"""``gantryd events PROJECT [-c COMP...] [--since REVISION] [--follow] [--json]``: the recorded
rollout events (slots acquired, released, lost; failed, halted; pull-*; remediations), oldest
first, like `docker events`; --follow goes on printing them as they are recorded."""
from __future__ import annotations

import argparse
import json
import queue
import sys
from collections.abc import Callable

from .. import etcd as E
from ..store import Event, Store
from .common import watched_kv

COLUMNS = ("TIME", "COMPONENT", "REV", "MACHINE", "EVENT", "SLOT", "DETAIL")
WIDTHS = (20, 10, 5, 10, 14, 4)  # fixed, so that a followed stream stays aligned


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("events", "the recorded rollout events (slots, failures, halts, pulls, "
                          "remediations), oldest first")
    components(p, required=False)
    p.add_argument("--since", type=int, default=None, metavar="REVISION",
                   help="only the events of this desired revision and later ones")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then print new events as they are recorded, until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object per event")


def line(component: str, e: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps({"component": component, **e.to_json(),
                           "etcdRevision": e.etcd_revision})
    cells = (e.at or "-", component, f"r{e.revision}", e.machine, e.kind,
             "-" if e.slot is None else str(e.slot))
    return _row(cells) + (e.detail or "")


def _row(cells: tuple[str, ...]) -> str:
    """The fixed-width cells and a space: the last column (DETAIL) goes after it."""
    return "".join(f"{c:<{w}} " for c, w in zip(cells, WIDTHS, strict=True))


def header() -> str:
    return _row(COLUMNS[:-1]) + COLUMNS[-1]


def cmd_events(args: argparse.Namespace, store: Store) -> int:
    names = list(args.components or store.require_config().names)
    start = store.etcd.revision()
    # Every kept event up to `start`, in the order etcd applied them (fleet-wide).
    kept = sorted(((e, n) for n in names for e in store.events(n)
                   if e.etcd_revision <= start), key=lambda p: p[0].etcd_revision)

    def wanted(e: Event) -> bool:
        return args.since is None or e.revision >= args.since
    if not args.json:
        print(header())
    for e, name in kept:
        if wanted(e):
            print(line(name, e, args.json))
    sys.stdout.flush()
    if not args.follow:
        return 0
    batches: queue.Queue[E.WatchBatch] = queue.Queue()
    watch = store.watch(batches.put, start_revision=start + 1)
    try:
        while True:
            for ev in batches.get().events:
                ref = store.keys.parse(ev.key)
                if ev.kind != "put" or ref.kind != "events" or ref.component not in names:
                    continue
                e = Event.from_kv(watched_kv(ev))
                if wanted(e):
                    print(line(ref.component, e, args.json), flush=True)
    except KeyboardInterrupt:  # how following ends: not an error
        return 0
    finally:
        watch.cancel()


COMMANDS = {"events": cmd_events}
