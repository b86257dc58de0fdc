"""``gantryd list PROJECT [-c COMP...] [--json] [--watch]``: the desired state and every
host's status; with --watch, again on every change (the project's etcd watch) until Ctrl-C."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import freeze, split
from ..follow_view import UP_AND_CLEAR
from ..store import Store


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("list", "show the desired state and every host's status")
    components(p, required=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true",
                   help="show it again on every change until Ctrl-C (a terminal: in place; "
                        "--json: one object per line)")


def short(image: str | None) -> str:
    """`repo@sha256:<12 hex>`: enough to tell versions apart (--json has it all)."""
    if not image:
        return "-"
    repo, sep, digest = image.partition("@sha256:")
    return f"{repo}@sha256:{digest[:12]}" if sep else image


def snapshot(store: Store, names: list[str]) -> tuple[dict[str, Any], list[list], list[list]]:
    """(the --json document, component rows, host rows)."""
    rows, hosts, out = [], [], {}
    for name in names:
        desired = store.desired(name)
        machines = store.machines(name)
        holds = freeze.read(store, name)
        out[name] = {"desired": desired.to_json() if desired else None,
                     "machines": [m.to_json() for m in machines], "freeze": holds.to_json()}
        status = "-" if desired is None else (
            f"halted ({desired.halted.machine})" if desired.is_halted and desired.halted
            else split.desired_status(desired))
        rows.append([name, status, short(desired.image if desired else None)])
        for m in machines:
            shown = split.host_status(m)  # `canary P%` for a host in a fleet canary
            hold = holds.of(m.machine) if m.status == "frozen" else None
            shown = hold.describe() if hold else shown  # frozen (reason, who, since)
            status = f"{shown} ({', '.join(m.traffic)})" if m.traffic else shown
            hosts.append([m.machine, name, status, short(m.image), m.since or "-",
                          m.error or ""])
    return out, rows, hosts


def render(store: Store, names: list[str], as_json: bool, indent: int | None = 2) -> str:
    from tabulate import tabulate
    out, rows, hosts = snapshot(store, names)
    if as_json:
        return json.dumps(out, indent=indent)
    return "\n".join([
        tabulate(rows, headers=["COMPONENT", "STATUS", "IMAGE ID"]), "",
        tabulate(hosts, headers=["MACHINE", "COMPONENT", "STATUS", "IMAGE", "SINCE", "ERROR"])
        if hosts else "(no live host)"])


def cmd_list(args: argparse.Namespace, store: Store) -> int:
    names = list(args.components or store.require_config().names)
    if not args.watch:
        print(render(store, names, args.json))
        return 0
    changed = threading.Event()
    # From the revision before the first read: no change between the read and the stream
    # is lost (the stream comes up in its own thread, later).
    watch = store.watch(lambda batch: changed.set(), start_revision=store.etcd.revision() + 1,
                        on_state=lambda up: changed.set())
    tty = sys.stdout.isatty() and not args.json
    shown, lines = None, 0
    try:
        while True:
            changed.clear()
            text = render(store, names, args.json, indent=None)  # --json: one per line
            if text != shown:  # most project changes (events, slots) do not show here
                clear = UP_AND_CLEAR.format(n=lines) if tty and lines else ""
                sys.stdout.write(clear + text + ("\n" if tty or args.json else "\n\n"))
                sys.stdout.flush()
                shown, lines = text, text.count("\n") + 1
            changed.wait()
    except KeyboardInterrupt:  # how a watch ends: not an error
        return 0
    finally:
        watch.cancel()


COMMANDS = {"list": cmd_list}
