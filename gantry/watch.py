"""``gantry watch``: keep this host equal to spec files, one project per file.

One thread (the caller's) does everything, one action at a time, so each component's changes
are serialized: look at the files (:mod:`gantry.watch_files`), compare with what runs
(:mod:`gantry.watch_plan`), act through the lifecycle (start, replace, recover, stop), then
sleep until a file event, a signal or the next due time (a pending file, a retry, the
follow-tags round, the periodic resync). Every change goes through ``Lifecycle`` -- start-first,
checked, drained -- so a replaced component serves throughout, and a failure leaves what ran.

Nothing is kept but what Docker labels and the proxy say: containers are made with origin
``watch``, ``io.gantry.source`` (the spec file) and ``io.gantry.spec`` (the spec digest). After
a kill -9 the next watcher compares those labels with the files and carries on: an interrupted
update is recovered (the lifecycle removes the never-routed container), a changed spec is
replaced, and a component of one of its spec files that is gone (the file, or the component in
it) is stopped. Containers of other origins, or from files outside the watched paths, are
never stopped for being absent.

``--follow-tags S``: every S seconds each component's tag is resolved again (registry) and a
moved digest is rolled out; the digest is what counts, so nothing happens while it stays.
SIGHUP: read the files, retry what failed, and redeploy: a build is built again, a tag is
resolved again, and a component not already running that digest is updated.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from . import build as B
from . import labels as L
from .config import parse_config
from .errors import GantryError
from .lifecycle import Host, Lifecycle
from .progress import ConsoleReporter, NullReporter
from .watch_files import SpecFiles, Wakeups
from .watch_plan import Action, Desired, Key, Running, plan
from .watch_state import WatchState

log = logging.getLogger(__name__)

POLL = 0.5  # without inotify: how often the files are looked at
IDLE = 2.0  # with inotify: still look this often (a missed event, a directory back)


def say(stream: TextIO, text: str) -> None:
    """One line of the watcher's output, timestamped."""
    stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    stream.flush()


class WatchReporter(ConsoleReporter):
    """The lifecycle's steps as timestamped lines naming the project; ``on_step`` runs after
    each step (the watcher observes the live container then)."""

    def __init__(self, project: str, stream: TextIO, on_step: Callable[[], None]) -> None:
        super().__init__(stream, live=False)
        self.project = project
        self.on_step = on_step

    def _line(self, text: str) -> None:
        say(self.stream, f"{self.project}: {text}")

    def step(self, message: str) -> None:
        super().step(message)
        self.on_step()


@dataclass
class Options:
    """How the watcher behaves (see ``gantry watch --help``)."""

    follow_tags: float | None = None
    retry: float = 60.0
    resync: float = 30.0


HostFactory = Callable[[str, str, Any], Host]  # (project, source, reporter) -> Host


class Watcher:
    """The reconciler. ``make_host(project, source, reporter)`` builds the Host of a project
    (origin ``watch``, ``source`` label); ``state`` is what the HTTP endpoint shows."""

    def __init__(self, files: SpecFiles, make_host: HostFactory, state: WatchState,
                 options: Options, out: TextIO | None = None,
                 wakeups: Wakeups | None = None) -> None:
        self.files = files
        self.make_host = make_host
        self.state = state
        self.options = options
        self.out = out or sys.stdout
        self.wakeups = wakeups or Wakeups(files.watch_dirs())
        probe = make_host("-", "", NullReporter())  # the engine and machine all projects share
        self.runtime, self.machine = probe.runtime, probe.machine
        self._lives: dict[tuple[str, str], Lifecycle] = {}
        self._desired: dict[Key, Desired] = {}
        self._known: dict[Key, Any] = {}  # the last config seen of each component (to stop it)
        self._working: tuple[Key, Lifecycle, Any] | None = None
        self._hups = 0  # SIGHUPs received: the handler counts, the loop only reads
        self._reported: dict[str, str] = {}  # file -> the error last reported
        self._last_error = ""
        self._follow_errors: dict[Key, str] = {}

    # -- the loop -------------------------------------------------------------------------
    def hangup(self) -> None:
        """SIGHUP: redeploy at the next turn (safe in a signal handler)."""
        self._hups += 1
        self.wakeups.poke()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch until ``stop()`` (or an exception: KeyboardInterrupt ends it)."""
        opts = self.options
        say(self.out, f"watching {', '.join(self.files.dirs + self.files.files)}"
            + ("" if self.wakeups.uses_inotify else f" (polling every {POLL:g}s)"))
        next_resync = next_follow = time.monotonic()
        compared = 0.0  # when the files were last compared with the host
        hups_served = 0
        while not stop():
            now = time.monotonic()
            changed = self.files.scan(now, frozenset(self.wakeups.writing),
                                      frozenset(self.wakeups.renamed))
            if changed:
                self._report_files()
            hups = self._hups
            hup, hups_served = hups != hups_served, hups
            retry = self.state.next_retry(after=compared)
            done: set[Key] = set()
            if changed or hup or now >= next_resync or (retry is not None and now >= retry):
                if hup:
                    self.state.unblock()
                compared = now
                done = self.reconcile()
                next_resync = time.monotonic() + opts.resync
            if hup:
                self.redeploy(skip=done)
            if opts.follow_tags and time.monotonic() >= next_follow:
                self.follow()
                next_follow = time.monotonic() + opts.follow_tags
            self.state.counted("passes")
            due = [next_resync, time.monotonic() + (IDLE if self.wakeups.uses_inotify else POLL)]
            due += [t for t in (self.files.next_look, self.state.next_retry(compared)) if t]
            if opts.follow_tags:
                due.append(next_follow)
            self.wakeups.wait(min(due) - time.monotonic())

    def _report_files(self) -> None:
        self.state.set_files(self.files.views.values())
        for path, view in self.files.views.items():
            bad = view.state in ("invalid", "conflict")
            if bad and self._reported.get(path) != view.error:
                what = "invalid" if view.state == "invalid" else "in conflict"
                say(self.out, f"error: spec file {path} is {what}; ignored (what runs stays):")
                for line in view.error.splitlines():
                    say(self.out, f"error:   {line}")
                self._reported[path] = view.error
            elif view.state == "loaded" and self._reported.pop(path, None) is not None:
                say(self.out, f"spec file {path} is valid again")
        for path in set(self._reported) - set(self.files.views):
            del self._reported[path]

    # -- reconcile ------------------------------------------------------------------------
    def reconcile(self) -> set[Key]:
        """One comparison of the files with the host, and the actions it calls for; answers
        the components started or replaced."""
        desired: dict[Key, Desired] = {}
        for project, view in self.files.projects().items():
            assert view.config is not None
            for c in view.config.components:
                desired[(project, c.name)] = Desired(project, view.path, c, L.spec_digest(c))
                self._known[(project, c.name)] = c
        self._desired = desired
        for key, want in desired.items():
            self.state.desire(key, want.source, wanted(want.component), want.spec)
        try:
            running = self._running(desired)
        except GantryError as exc:
            self._error(f"cannot see what runs: {exc} (retrying in {self.options.resync:g}s)")
            return set()
        self._last_error = ""
        self.state.forget(self.state.keys() - set(desired) - set(running))
        done = set()
        for action in plan(desired, running, self.files.held(),
                           lambda key, spec: self.state.blocked(key, spec)):
            self._act(action, running.get(action.key))
            if action.kind in ("start", "replace"):
                done.add(action.key)
        return done

    def _error(self, text: str) -> None:
        if text != self._last_error:  # once until it changes, not every pass
            say(self.out, f"error: {text}")
            self._last_error = text

    def _running(self, desired: dict[Key, Desired]) -> dict[Key, Running]:
        """What runs: every desired component, and every one this watcher made (labels)."""
        sources: dict[Key, str] = {k: d.source for k, d in desired.items()}
        owned: set[Key] = set()
        infos = {i.id: i for i in self.runtime.list([f"{L.MACHINE}={self.machine}"])}
        for info in infos.values():
            lab = info.labels
            if lab.origin == "watch" and lab.source and self.files.owns(lab.source):
                key = (lab.project, lab.component)
                owned.add(key)
                sources.setdefault(key, lab.source)
        running = {}
        for key, source in sorted(sources.items()):
            life = self._life(key[0], source)
            statuses = life.status(key[1])
            if not statuses:
                continue
            live = next((s for s in reversed(statuses) if s.state == "running"), None)
            info = (infos.get(live.id) or self.runtime.inspect(live.id)) if live else None
            others = sum(1 for s in statuses if s is not live and s.state != "canary")
            running[key] = Running(key[0], key[1], source, live.id if live else "",
                                   live.image if live else "", info.labels.spec if info else "",
                                   others, key in owned)
            self.state.observe(key, running[key].container, running[key].image,
                               running[key].spec)
        return running

    def _life(self, project: str, source: str) -> Lifecycle:
        life = self._lives.get((project, source))
        if life is None:
            reporter = WatchReporter(project, self.out, self._observe_working)
            life = self._lives[(project, source)] = Lifecycle(
                self.make_host(project, source, reporter))
        return life

    def _observe_working(self) -> None:
        """After each lifecycle step: what runs now, for the waiters of /v1/wait_for."""
        if self._working is None:
            return
        key, life, component = self._working
        try:
            live = life.current(component)
            info = life.runtime.inspect(live.id) if live else None
        except GantryError:
            return
        self.state.observe(key, live.id if live else "", live.image if live else "",
                           info.labels.spec if info else "")

    # -- actions --------------------------------------------------------------------------
    def _act(self, action: Action, running: Running | None) -> None:
        key = action.key
        if action.kind in ("start", "replace"):
            assert action.desired is not None
            if action.kind == "start" and running is not None and running.others \
                    and self._recovered(action.desired):
                return
            self._deploy(action.desired, None, action.reason, rebuild=True)
            return
        source = action.desired.source if action.desired else running.source if running else ""
        component = self._known.get(key) or _stand_in(key)
        life = self._life(key[0], source)
        say(self.out, f"{key[0]}: {key[1]}: {action.kind} ({action.reason})")
        try:
            if action.kind == "stop":
                self.state.set_stopping(key)
                life.stop(component)
                self.state.forget([key])
                self._known.pop(key, None)
            else:
                life.recover(component)
        except Exception as exc:  # one component's trouble must not end the watcher
            text = _failure(exc)
            say(self.out, f"error: {key[0]}: {key[1]}: {action.kind} failed: {text}")
            self.state.note_error(key, text)

    def _recovered(self, want: Desired) -> bool:
        """Containers but none routed (an engine restart, routes lost): recover may route the
        survivor again; answers whether that one runs the spec (then nothing is deployed)."""
        key, component = (want.project, want.component.name), want.component
        life = self._life(want.project, want.source)
        try:
            life.recover(component)
            live = life.current(component)
            info = self.runtime.inspect(live.id) if live else None
        except GantryError as exc:
            say(self.out, f"error: {want.project}: {_about(component.name, exc)}")
            return False
        if info is None or info.labels.spec != want.spec:
            return False
        self.state.observe(key, info.id, info.labels.image, info.labels.spec)
        say(self.out, f"{want.project}: {component.name}: {info.short_id} serves again")
        return True

    def _deploy(self, want: Desired, image: str | None, why: str, rebuild: bool = False
                ) -> bool:
        """Start or replace one component (``image``: a pinned one, else the tag resolved
        now, or a build); answers whether it went live. A build is rolled out only if its
        image changed, unless ``rebuild`` (a new spec: checks, timeouts... count too)."""
        key, component = (want.project, want.component.name), want.component
        life = self._life(want.project, want.source)
        self.state.begin(key, want.spec, wanted(component))
        say(self.out, f"{want.project}: {component.name}: update ({why})")
        self._working = (key, life, component)
        try:
            if image is None and not _builds(component):
                image = life.resolve(component)
            elif image is None and rebuild:
                image = B.image(life, component)
            if image:
                self.state.resolved(key, image)
            deployment = life.update(component, image=image)
            self.state.resolved(key, deployment.image)
            self._observe_working()
            self.state.ended(key)
            return True
        except Exception as exc:  # one component's trouble must not end the watcher
            text = _failure(exc)
            say(self.out, f"error: {want.project}: {_about(component.name, text)}")
            self._observe_working()
            self.state.ended(key, text, self.options.retry)
            return False
        finally:
            self._working = None

    # -- tags -----------------------------------------------------------------------------
    def _resolve(self, want: Desired) -> str | None:
        """The digest the tag points at now (registry); None (reported once) if unknown."""
        key = (want.project, want.component.name)
        try:
            ref = self._life(want.project, want.source).resolve(want.component,
                                                                allow_local=False)
        except GantryError as exc:
            if self._follow_errors.get(key) != str(exc):
                say(self.out, f"error: {want.project}: {_about(want.component.name, exc)}")
                self._follow_errors[key] = str(exc)
            return None
        self._follow_errors.pop(key, None)
        return ref

    def follow(self) -> None:
        """One --follow-tags round: roll out every tag whose digest moved."""
        for key, want in sorted(self._desired.items()):
            st = self.state.get(key)
            if _builds(want.component) or st is None or not st.container \
                    or st.live_spec != want.spec:
                continue  # builds have no tag to follow; the rest is reconcile's
            ref = self._resolve(want)
            if ref is None or ref == st.image or self.state.blocked(key, want.spec, ref):
                continue
            self._deploy(want, ref, f"{want.component.image} moved to {ref}")
        self.state.counted("follow_rounds")

    def redeploy(self, skip: set[Key]) -> None:
        """SIGHUP: build again or resolve again, and update what does not run that."""
        say(self.out, "SIGHUP: redeploying")
        for key, want in sorted(self._desired.items()):
            if key in skip:
                continue
            if _builds(want.component):
                self._deploy(want, None, "SIGHUP: build again")
                continue
            ref = self._resolve(want)
            st = self.state.get(key)
            if ref is None:
                continue
            if st is not None and st.container and st.image == ref \
                    and st.live_spec == want.spec:
                say(self.out, f"{key[0]}: {key[1]}: already runs {ref}")
                continue
            self._deploy(want, ref, f"SIGHUP: {want.component.image} is {ref}")


def _about(name: str, error: Exception | str) -> str:
    """``name: message`` (the lifecycle's messages name the component already)."""
    text = str(error)
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


def _failure(exc: Exception) -> str:
    """The message of a failed action; anything but a GantryError is a bug: its traceback
    goes to the log (stderr)."""
    if isinstance(exc, GantryError):
        return str(exc)
    log.error("unexpected error", exc_info=exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def _builds(component: Any) -> bool:
    return getattr(component, "build", None) is not None


def _stand_in(key: Key) -> Any:
    """A component to stop when its spec is gone (a file deleted while no watcher ran): the
    default drain and stop timeouts (stopping needs nothing else: the routes are the proxy's)."""
    return parse_config({"components": [{"name": key[1], "repo": "gantry/gone"}]}).components[0]


def wanted(component: Any) -> str:
    """What a spec asks to run, as /v1/state and /v1/wait_for name it: ``repo:tag``, or
    ``build:CONTEXT`` for a component built on the host."""
    return f"build:{component.build.context}" if _builds(component) else component.image
