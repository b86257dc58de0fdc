"""``gantryd endpoints PROJECT [-c COMP...] [--json | --format haproxy|nginx | --template FILE]
[--watch] [--output FILE [--reload-cmd CMD]]``: the ports every host publishes
(gantryd/endpoints.py), as a table, JSON, or a load balancer's config (gantryd/
endpoint_render.py); with --watch again on every change, until Ctrl-C."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable

from .. import endpoints as EP
from .. import etcd as E
from ..endpoint_render import FORMATS, EndpointTemplate, Output, TemplateError, groups
from ..store import Store, StoreError
from .common import unknown_components
from .listing import short

log = logging.getLogger("gantryd.endpoints")

BACKOFF_START, BACKOFF_MAX = 0.5, 5.0


def register(command: Callable[..., argparse.ArgumentParser],
             components: Callable[..., None]) -> None:
    p = command("endpoints", "show the ports every host serves, or render them for a load "
                             "balancer (HAProxy, nginx, a template)")
    components(p, required=False)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="machine-readable output")
    how.add_argument("--format", choices=sorted(FORMATS),
                     help="a config snippet: an HAProxy backend / nginx upstream per "
                          "component port, its healthy hosts as servers")
    how.add_argument("--template", metavar="FILE",
                     help="render FILE (see docs/fleet.md, \"Endpoints\")")
    p.add_argument("--watch", action="store_true",
                   help="render again on every change of the endpoints, until Ctrl-C")
    p.add_argument("--output", metavar="FILE",
                   help="write FILE (atomically, only when its content changes) instead of "
                        "printing")
    p.add_argument("--reload-cmd", metavar="CMD",
                   help="shell command run after each change of --output (its failure is "
                        "logged, not fatal)")


class _Renderer:
    """One of the output forms, from the arguments (TemplateError for a bad template)."""

    def __init__(self, args: argparse.Namespace):
        self.json = args.json
        self.template = (EndpointTemplate.load(args.template) if args.template else
                         EndpointTemplate(FORMATS[args.format], args.format) if args.format
                         else None)
        self.watching = args.watch

    def __call__(self, store: Store, names: list[str]) -> str:
        found = EP.read(store, names)
        if self.template is not None:
            return self.template.render(store.project, groups(store.config(), names, found))
        if self.json:
            return json.dumps([e.to_json() for e in found], indent=None if self.watching
                              else 2) + "\n"
        from tabulate import tabulate
        rows = [[e.component, e.port, e.machine, e.hostport, e.kind, e.revision or "-",
                 "yes" if e.healthy else "no", e.since or "-", short(e.image)] for e in found]
        return (tabulate(rows, headers=["COMPONENT", "PORT", "MACHINE", "ADDRESS", "KIND",
                                        "REVISION", "HEALTHY", "SINCE", "IMAGE"])
                if rows else "(no endpoint)") + "\n"


def cmd_endpoints(args: argparse.Namespace, store: Store) -> int:
    if args.reload_cmd and not args.output:
        print("gantryd endpoints: --reload-cmd needs --output", file=sys.stderr)
        return 2
    try:
        render = _Renderer(args)
    except TemplateError as exc:
        print(f"gantryd endpoints: {exc}", file=sys.stderr)
        return 2
    names = list(args.components or store.require_config().names)
    if args.components and unknown_components(store, names):
        return 1
    output = Output(args.output, args.reload_cmd) if args.output else None
    if not args.watch:
        try:
            _emit(render(store, names), output)
        except OSError as exc:
            print(f"gantryd endpoints: {_cannot_write(output, exc)}", file=sys.stderr)
            return 1
        return 0
    return _watch(store, names, render, output)


def _emit(text: str, output: Output | None) -> None:
    """Print `text`, or write it to the output file (OSError when that fails)."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        output.write(text)


def _cannot_write(output: Output | None, exc: OSError) -> str:
    return f"cannot write {output.path if output else 'stdout'}: {exc.strerror or exc}"


def _watch(store: Store, names: list[str], render: _Renderer, output: Output | None) -> int:
    """Render on every change of the endpoints or the config (etcd watch) until Ctrl-C or
    SIGTERM; etcd or the output file failing keeps the last rendering and retries."""
    logging.getLogger("gantryd.endpoints").setLevel(logging.INFO)  # wrote / reloaded lines
    changed = threading.Event()

    def on_batch(batch: E.WatchBatch) -> None:
        if batch.resync or any(store.keys.parse(ev.key).kind in ("endpoints", "config")
                               for ev in batch.events):
            changed.set()
    # From the revision before the first read: no change between the read and the stream
    # is lost.
    watch = store.watch(on_batch, start_revision=store.etcd.revision() + 1,
                        on_state=lambda up: changed.set())
    _interrupt_on_sigterm()
    shown, delay = None, BACKOFF_START
    try:
        while True:
            changed.clear()
            try:
                text = render(store, names)
            except (E.EtcdError, StoreError) as exc:
                log.warning("cannot read the endpoints (%s); keeping the last rendering", exc)
                changed.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if text != shown:
                try:
                    _emit(text, output)
                except OSError as exc:  # a full disk, a removed folder: try again
                    log.error("%s; retrying", _cannot_write(output, exc))
                    changed.wait(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                shown = text
            delay = BACKOFF_START
            changed.wait()
    except KeyboardInterrupt:  # how a watch ends: not an error
        return 0
    finally:
        watch.cancel()


def _interrupt_on_sigterm() -> None:
    """SIGTERM (systemd, a supervisor) ends the watch like Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


COMMANDS = {"endpoints": cmd_endpoints}
