"""`GET /v1/wait_for` (condo's): hold the request until one revision of one component is
rolled out (200), failed or was superseded before it rolled out (409), or the timeout passed
(504), woken by an etcd watch of the component's keys (no polling of etcd).

The rules are `gantryd wait`'s (rollout.progress): done once every live host that is not a
canary or frozen reports the revision reached; a halt of the revision is a failure (which
host, what error), and so is an auto-revert away from it. A later revision decides an
earlier one: it was rolled out if it got its done marker before it was superseded, else
409. A revision not written yet is waited for (a webhook may be about to write it).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import history as H
from .. import revisions, rollout
from ..store import Desired, MachineStatus, Store
from .app import HttpError

POLL = 1.0  # seconds between looks at whether the client left or the server stops


@dataclass(frozen=True)
class Outcome:
    """An answer: `status` (200, 409, 504, 503) and its document."""

    status: int
    doc: dict[str, Any]


def _doc(store: Store, component: str, revision: int, desired: Desired | None,
         machines: list[MachineStatus], status: str, error: str | None = None,
         failed: tuple[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    progress = rollout.progress(desired, machines) if desired is not None and \
        desired.revision == revision else None
    return {
        "project": store.project, "component": component, "revision": revision,
        "status": status, "error": error,
        "failed": {"machine": failed[0], "error": failed[1]} if failed else None,
        "desiredRevision": desired.revision if desired else None,
        "pending": list(progress.pending) if progress else [],
        "hosts": [m.to_json() for m in machines],
        **extra,
    }


def _failure_of(store: Store, component: str, revision: int) -> tuple[str, str] | None:
    """(machine, error) that ended `revision`: the auto-revert that answered it, or its halt."""
    for entry in store.history(component):
        if entry.reverted is not None and entry.reverted.revision == revision:
            return entry.reverted.machine, entry.reverted.error
    return H.halts(store.events(component)).get(revision)


def check(store: Store, component: str, revision: int) -> Outcome | None:
    """The answer now, or None while the revision is still on its way."""
    desired = store.desired(component)
    machines = store.machines(component)
    current = desired.revision if desired else 0
    if current < revision:
        return None
    if current > revision:
        if revision in revisions.done(store, component):
            return Outcome(200, _doc(store, component, revision, desired, machines, "done",
                                     supersededBy=current))
        failed = _failure_of(store, component, revision)
        why = (f"revision {revision} failed on {failed[0]}: {failed[1]}" if failed else
               f"revision {revision} was superseded by revision {current} before every "
               "host reached it")
        return Outcome(409, _doc(store, component, revision, desired, machines,
                                 "failed" if failed else "superseded", why, failed,
                                 supersededBy=current))
    assert desired is not None
    progress = rollout.progress(desired, machines)
    if progress.failed:
        machine, error = progress.failed
        return Outcome(409, _doc(store, component, revision, desired, machines, "failed",
                                 f"rollout failed on {machine}: {error}", progress.failed))
    if progress.done:
        # As `gantryd wait` does: the done marker is there once the caller hears "done"
        # (a rollback goes back to it). Written once, guarded; the last host writes it too.
        revisions.mark_done(store, component, revision)
        return Outcome(200, _doc(store, component, revision, desired, machines, "done",
                                 canaries=list(progress.canaries),
                                 frozen=list(progress.frozen)))
    return None


def wait_for(store: Store, component: str, revision: int | None, timeout: float,
             gone: threading.Event, stopping: threading.Event) -> Outcome:
    """Answer as soon as `check` has one, else after `timeout` seconds (504); `revision`
    None: the current desired one (HttpError 404 when there is none). Stops early
    (503) when the client left (`gone`: nobody reads the answer) or the server stops."""
    start_revision = store.etcd.revision() + 1  # before the first look: no change is missed
    if revision is None:
        desired = store.desired(component)
        if desired is None:
            raise HttpError(404, f"{component} has no desired state yet (never updated): "
                                 "nothing to wait for")
        revision = desired.revision
    outcome = check(store, component, revision)
    if outcome is not None:
        return outcome
    deadline = time.monotonic() + timeout
    wake = threading.Event()
    watch = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # a last look: a change may be on its way through the watch
                return check(store, component, revision) or \
                    _timed_out(store, component, revision, timeout)
            if watch is None:
                watch = store.etcd.watch_prefix(store.keys.component(component),
                                                lambda batch: wake.set(), start_revision,
                                                on_state=lambda up: wake.set())
            if wake.wait(min(remaining, POLL)):
                wake.clear()
                outcome = check(store, component, revision)
                if outcome is not None:
                    return outcome
            if gone.is_set() or stopping.is_set():
                return Outcome(503, {"error": "gantryd serve is stopping or the client left; "
                                              "ask again", "status": "interrupted"})
    finally:
        if watch is not None:
            watch.cancel()


def _timed_out(store: Store, component: str, revision: int, timeout: float) -> Outcome:
    desired = store.desired(component)
    machines = store.machines(component)
    if desired is None or desired.revision < revision:
        what = f"revision {revision} to be written"
    else:
        pending = rollout.progress(desired, machines).pending
        what = ", ".join(pending) if pending else "a live host"
    return Outcome(504, _doc(store, component, revision, desired, machines, "timeout",
                             f"timed out after {timeout:g} s waiting for {what}"))
