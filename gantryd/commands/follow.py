"""``gantryd wait PROJECT -c COMP... [--timeout S] [--quiet|--json]`` and ``update --wait``:
block until the rollout is done (0), failed (1) or timed out (2), showing it live from the
project's etcd watch (gantryd/follow.py, gantryd/follow_view.py)."""
from __future__ import annotations

import argparse
import queue
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from .. import etcd as E
from .. import revisions, rollout
from ..follow import Follower, pinned_tags
from ..follow_view import JSON, TTY, View, mode_for
from ..store import MachineStatus, Store
from .common import watched_kv

REDRAW = 0.5  # seconds between redraws of the table's elapsed time (tty)


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("wait", "block until the rollout is done (0), failed (1) or timed out (2), "
                        "showing every host's progress")
    components(p)
    add_options(p)


def add_options(p: argparse.ArgumentParser, update: bool = False) -> None:
    """The follow options (`update` adds --wait)."""
    if update:
        p.add_argument("--wait", action="store_true",
                       help="then follow the rollout like `gantryd wait`")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the outcome")
    shown.add_argument("--json", action="store_true",
                       help="one JSON object per host transition")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Feed:
    """The etcd watch of the project as a queue of host statuses, from a snapshot on."""

    def __init__(self, store: Store, names: Sequence[str]):
        self.store = store
        self.names = set(names)
        self.queue: queue.Queue[E.WatchBatch | None] = queue.Queue()
        self.snapshot: list[tuple[str, str, MachineStatus]] = []
        start = None
        for name in names:
            kvs, revision = store.etcd.get_prefix(store.keys.machines(name))
            start = revision if start is None else min(start, revision)
            self.snapshot += [(name, s.machine, s) for s in map(MachineStatus.from_kv, kvs)]
        # From the first read on: a change between the reads shows twice at worst (the
        # follower drops a repeated state), none is lost.
        self.watch = store.watch(self.queue.put, start_revision=(start or 0) + 1,
                                 on_state=lambda up: self.queue.put(None))

    def next(self, timeout: float) -> list[tuple[str, str, MachineStatus | None]] | None:
        """Host statuses that changed, waiting up to `timeout` for the watch to deliver
        anything (None: nothing came); after a resync or a reconnect, all of them re-read."""
        try:
            batches = [self.queue.get(timeout=max(timeout, 0))]
        except queue.Empty:
            return None
        while not self.queue.empty():
            batches.append(self.queue.get_nowait())
        out: list[tuple[str, str, MachineStatus | None]] = []
        for batch in batches:
            if batch is None or batch.resync:
                return self.reread()
            for ev in batch.events:
                ref = self.store.keys.parse(ev.key)
                if ref.kind != "machines" or ref.component not in self.names:
                    continue
                status = None if ev.kind == "delete" else MachineStatus.from_kv(watched_kv(ev))
                out.append((ref.component, ref.rest, status))
        return out

    def reread(self) -> list[tuple[str, str, MachineStatus | None]]:
        return [(n, s.machine, s) for n in sorted(self.names) for s in self.store.machines(n)]


def follow(args: argparse.Namespace, store: Store, names: Sequence[str],
           started: float | None = None) -> int:
    """Show the rollout of `names` until it is done (0), failed (1) or timed out (2)."""
    started = time.monotonic() if started is None else started
    mode = mode_for(sys.stdout, args.json, args.quiet)
    view = View(sys.stdout, mode)
    notes = sys.stderr if mode == JSON else sys.stdout  # --json: stdout holds JSON alone
    feed = _Feed(store, names)
    follower = Follower()
    deadline = time.monotonic() + args.timeout
    changes: list[tuple[str, str, MachineStatus | None]] = feed.snapshot
    try:
        while True:
            desired = {n: store.desired(n) for n in names}
            if desired != follower.desired:
                follower.desired = dict(desired)
                follower.tags = {t: g for n in names for t, g in
                                 pinned_tags(store.history(n)).items()}
            for name, machine, status in changes:
                t = follower.observe(name, machine, status, time.monotonic() - started, _now())
                if t is not None:
                    view.transition(t)
            view.table(follower, time.monotonic() - started)
            states = {n: rollout.progress(desired[n], store.machines(n)) for n in names}
            failed = [(n, p.failed) for n, p in states.items() if p.failed]
            if failed:
                view.summary(follower, time.monotonic() - started, "rollout failed")
                for name, (machine, error) in failed:
                    print(f"{name}: rollout failed on {machine}: {error}", file=sys.stderr)
                return 1
            if all(p.done for p in states.values()):
                view.summary(follower, time.monotonic() - started, "rollout done")
                for name, p in states.items():
                    # The host that completed it marks it done too; after `wait` it is there.
                    revisions.mark_done(store, name)
                    if p.canaries:
                        print(f"{name}: left out canary hosts: {', '.join(p.canaries)}",
                              file=notes)
                    if p.frozen:
                        print(f"{name}: left out frozen hosts: {', '.join(p.frozen)}",
                              file=notes)
                return 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                view.summary(follower, time.monotonic() - started, "timed out")
                for name, p in states.items():
                    if not p.done:
                        what = ", ".join(p.pending) if p.pending else "no live host"
                        print(f"{name}: timed out waiting for {what}", file=sys.stderr)
                return 2
            # A terminal's table shows the elapsed time: wake up to redraw it now and then
            # (only a change of the project's keys makes it read etcd again).
            woke = feed.next(min(remaining, REDRAW) if mode == TTY else remaining)
            while woke is None and mode == TTY and time.monotonic() < deadline:
                view.table(follower, time.monotonic() - started)
                woke = feed.next(min(deadline - time.monotonic(), REDRAW))
            changes = woke or []
    finally:
        feed.watch.cancel()


def cmd_wait(args: argparse.Namespace, store: Store) -> int:
    return follow(args, store, args.components)


COMMANDS = {"wait": cmd_wait}
