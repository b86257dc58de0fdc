"""What ``gantry watch`` knows of its components, for ``GET /v1/state`` and ``/v1/wait_for``.

The watcher (one thread) writes, HTTP handlers (threads of their own) read and wait: every
change notifies the waiters, which re-judge. The live container is observed after every
lifecycle step, so a waiter learns of a switch as soon as the routes point at the new one.

Statuses: ``pending`` (nothing tried yet), ``starting``/``updating`` (an attempt under way),
``running`` (the live container runs the spec), ``failed`` (the last attempt at the spec
failed: ``lastError``; the previous container, if any, still serves), ``stopping``.
A failed attempt is retried after ``retry`` seconds, doubling up to :data:`MAX_RETRY`, or at
once on a new spec or a SIGHUP.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from .watch_files import FileView
from .watch_plan import Key

MAX_RETRY = 900.0
MAX_WAIT = 3600.0


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def _names(ref: str) -> set[str]:
    """The names an image is known by: the pinned reference and its bare digest."""
    if not ref:
        return set()
    return {ref, ref.partition("@")[2]} - {""}


@dataclass
class Attempt:
    """One start or replacement of a component."""

    spec: str
    wanted: str  # repo:tag as the spec file says
    replacing: bool = False  # a container served when it began (updating, not starting)
    ref: str = ""  # the digest-pinned image, once resolved
    state: str = "running"  # running | ok | failed
    error: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None
    failures: int = 0  # consecutive failed attempts at this spec
    retry_at: float | None = None  # monotonic time a failed attempt may be retried

    def names(self) -> set[str]:
        return {self.wanted} | _names(self.ref)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.wanted, "pinned": self.ref or None, "state": self.state,
                "error": self.error or None, "started": _iso(self.started),
                "ended": _iso(self.ended), "failures": self.failures}


@dataclass
class ComponentState:
    """One component: what its spec file wants and what runs."""

    project: str
    component: str
    source: str = ""
    wanted: str = ""  # repo:tag
    spec: str = ""  # spec_digest
    container: str = ""  # the live container
    image: str = ""  # its pinned image
    live_spec: str = ""
    live_wanted: str = ""  # the repo:tag it was deployed as, when known
    status: str = "pending"
    since: float = field(default_factory=time.time)
    last_error: str = ""
    stopping: bool = False
    attempt: Attempt | None = None

    def derive(self) -> str:
        a = self.attempt
        if self.stopping:
            return "stopping"
        if a is not None and a.state == "running":
            return "updating" if a.replacing else "starting"
        if a is not None and a.state == "failed" and a.spec == self.spec:
            return "failed"
        if self.container and self.live_spec == self.spec:
            return "running"
        return "pending"

    def runs(self, image: str | None) -> bool:
        """Whether the live container (routed: its checks passed) runs ``image`` (a pinned
        reference, a digest or the repo:tag it was deployed as); None: the spec as it is."""
        if not self.container:
            return False
        if image is None:
            return self.live_spec == self.spec
        return image in _names(self.image) | ({self.live_wanted} - {""})

    def failed_at(self, image: str | None) -> bool:
        """Whether the last attempt, at ``image`` (None: at the spec as it is), failed."""
        a = self.attempt
        if a is None or a.state != "failed":
            return False
        return a.spec == self.spec if image is None else image in a.names()

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project, "component": self.component, "source": self.source,
            "desired": {"image": self.wanted, "spec": self.spec},
            "container": self.container or None, "image": self.image or None,
            "status": self.status, "since": _iso(self.since),
            "lastError": self.last_error or None,
            "attempt": self.attempt.to_dict() if self.attempt else None,
        }


class WatchState:
    """The shared view; every method is thread-safe."""

    def __init__(self, machine: str, follow_tags: float | None = None) -> None:
        self.machine = machine
        self.follow_tags = follow_tags
        self.follow_rounds = 0
        self.passes = 0
        self.started = time.time()
        self._files: list[FileView] = []
        self._components: dict[Key, ComponentState] = {}
        self._cond = threading.Condition()

    # -- written by the watcher -----------------------------------------------------------
    def _change(self, key: Key, **changes: Any) -> ComponentState:
        st = self._components.get(key)
        if st is None:
            st = self._components[key] = ComponentState(*key)
        for name, value in changes.items():
            setattr(st, name, value)
        status = st.derive()
        if status != st.status:
            st.status, st.since = status, time.time()
        self._cond.notify_all()
        return st

    def set_files(self, views: Iterable[FileView]) -> None:
        with self._cond:
            self._files = sorted(views, key=lambda v: v.path)
            self._cond.notify_all()

    def desire(self, key: Key, source: str, wanted: str, spec: str) -> None:
        with self._cond:
            st = self._components.get(key)
            if st is None or (st.source, st.wanted, st.spec) != (source, wanted, spec):
                self._change(key, source=source, wanted=wanted, spec=spec)

    def forget(self, keys: Iterable[Key]) -> None:
        with self._cond:
            for key in keys:
                self._components.pop(key, None)
            self._cond.notify_all()

    def keys(self) -> set[Key]:
        with self._cond:
            return set(self._components)

    def observe(self, key: Key, container: str, image: str, live_spec: str) -> None:
        """What the host runs now (from the lifecycle's view)."""
        with self._cond:
            st = self._components.get(key) or ComponentState(*key)
            wanted = st.live_wanted if container == st.container else ""
            a = st.attempt
            if a is not None and a.ref and image == a.ref and live_spec == a.spec:
                wanted = a.wanted
            elif container and live_spec == st.spec:
                wanted = st.wanted
            self._change(key, container=container, image=image, live_spec=live_spec,
                         live_wanted=wanted)

    def begin(self, key: Key, spec: str, wanted: str) -> None:
        with self._cond:
            st = self._components.get(key) or ComponentState(*key)
            old = st.attempt
            failures = old.failures if old is not None and old.spec == spec else 0
            self._change(key, attempt=Attempt(spec, wanted, bool(st.container),
                                              failures=failures))

    def resolved(self, key: Key, ref: str) -> None:
        with self._cond:
            st = self._components[key]
            if st.attempt is not None:
                st.attempt.ref = ref
                self._cond.notify_all()

    def ended(self, key: Key, error: str = "", retry: float = 60.0) -> None:
        """The attempt under way succeeded (no ``error``) or failed."""
        with self._cond:
            st = self._components[key]
            a = st.attempt
            assert a is not None
            a.ended = time.time()
            if error:
                a.state, a.error, a.failures = "failed", error, a.failures + 1
                if retry > 0:
                    a.retry_at = time.monotonic() + min(retry * 2 ** (a.failures - 1),
                                                        MAX_RETRY)
                self._change(key, last_error=error)
            else:
                a.state, a.failures = "ok", 0
                self._change(key)

    def set_stopping(self, key: Key) -> None:
        with self._cond:
            self._change(key, stopping=True)

    def note_error(self, key: Key, error: str) -> None:
        with self._cond:
            self._change(key, last_error=error)

    def blocked(self, key: Key, spec: str, ref: str | None = None) -> bool:
        """Whether the last attempt at ``spec`` (and ``ref``, if given) failed and may not be
        retried yet."""
        with self._cond:
            st = self._components.get(key)
            a = st.attempt if st else None
            if a is None or a.state != "failed" or a.spec != spec:
                return False
            if ref is not None and a.ref != ref:
                return False
            return a.retry_at is None or time.monotonic() < a.retry_at

    def next_retry(self, after: float) -> float | None:
        """The monotonic time of the earliest retry of a failed attempt later than ``after``
        (the last comparison: it saw every earlier one)."""
        with self._cond:
            times = [a.retry_at for a in (st.attempt for st in self._components.values())
                     if a and a.state == "failed" and a.retry_at and a.retry_at > after]
            return min(times) if times else None

    def unblock(self) -> None:
        """Failed attempts may be retried now (SIGHUP)."""
        with self._cond:
            for st in self._components.values():
                if st.attempt is not None and st.attempt.state == "failed":
                    st.attempt.retry_at = 0.0  # due long ago

    def get(self, key: Key) -> ComponentState | None:
        with self._cond:
            st = self._components.get(key)
            return None if st is None else ComponentState(**vars(st))

    def counted(self, what: str) -> None:
        """One more watcher pass (``passes``) or follow-tags round (``follow_rounds``)."""
        with self._cond:
            setattr(self, what, getattr(self, what) + 1)
            self._cond.notify_all()

    # -- read by the HTTP endpoint --------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "machine": self.machine, "started": _iso(self.started), "passes": self.passes,
                "followTags": self.follow_tags, "followRounds": self.follow_rounds,
                "files": [v.to_dict() for v in self._files],
                "components": [st.to_dict() for _, st in sorted(self._components.items())],
            }

    def _find(self, project: str | None, component: str) -> list[ComponentState]:
        return [st for (p, c), st in self._components.items()
                if c == component and project in (None, p)]

    def wait_for(self, project: str | None, component: str, image: str | None,
                 timeout: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 once the component runs ``image`` (checks passed), 409 if
        its last attempt at it failed, 504 at the timeout, 400 if ``component`` is ambiguous."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._find(project, component)
                if len(found) > 1:
                    projects = sorted(st.project for st in found)
                    return 400, {"error": f"component {component!r} is in several projects "
                                          f"({', '.join(projects)}): say project=..."}
                st = found[0] if found else None
                if st is not None and st.runs(image):
                    return 200, st.to_dict()
                if st is not None and st.failed_at(image):
                    return 409, {**st.to_dict(), "error": st.attempt.error}  # type: ignore
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = f"{component} running {image}" if image else component
                    body = st.to_dict() if st else {"component": component}
                    return 504, {**body, "error": f"timed out after {timeout:g}s waiting for "
                                                  f"{what}"}
                self._cond.wait(remaining)
