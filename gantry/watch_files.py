"""The spec files of ``gantry watch``: which files, their projects, and when one is complete.

A watched PATH is a file (watched whatever its name) or a directory, whose spec files are the
regular files named ``*.json``, ``*.yml`` or ``*.yaml`` not starting with a dot (not recursive),
so editor droppings (``.x.json.swp``, ``x.json~``, ``#x.json#``, ``4913``) are never read.
One file is one project, named after the file (``shop.yml`` -> ``shop``, sanitized as the CLI
does; a file named ``.gantry`` takes its directory's name, as the other commands do).

"Read only once complete": a file is read when it is not open for writing (inotify: a
modification not yet followed by its close) and its (mtime, size, inode) held still for
``settle`` seconds. Until then it is *pending* and what runs stays. A file renamed into place
(what editors and config tools do; inotify: moved in, not written since) is complete at once.
A file whose project another, earlier file already has is a *conflict*, also ignored.
"""
from __future__ import annotations

import logging
import os
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .cli import sanitize_project
from .config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".yml", ".yaml")
DEFAULT_NAME = ".gantry"  # the other commands' config name: project = its directory's name


def is_spec_name(name: str) -> bool:
    """Whether a file in a watched directory is a spec file (by its name)."""
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def project_of(path: str) -> str:
    """The project a spec file describes: its name without the suffix, sanitized."""
    p = Path(path)
    if p.name == DEFAULT_NAME:
        return sanitize_project(p.parent.name)
    return sanitize_project(p.stem if p.suffix.lower() in SUFFIXES else p.name)


@dataclass(frozen=True)
class FileView:
    """One spec file as the watcher sees it.

    ``state``: ``loaded`` (``config`` is the file now), ``invalid`` (``error`` says why;
    ``config`` is the last valid one, if any), ``pending`` (being written; ``config`` as
    before) or ``conflict`` (another file has the project; ignored)."""

    path: str
    project: str
    state: str
    config: Config | None = None
    error: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "project": self.project, "state": self.state,
                "error": self.error or None}


Signature = tuple[int, int, int]  # mtime_ns, size, inode
Paths = frozenset[str] | set[str]


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class SpecFiles:
    """The watched paths, looked at by :meth:`scan` (call it again at :attr:`next_look`)."""

    def __init__(self, paths: Iterable[str], settle: float = 0.5) -> None:
        self.files: list[str] = []  # named files, watched whatever their name
        self.dirs: list[str] = []
        for p in paths:
            (self.dirs if os.path.isdir(p) else self.files).append(os.path.abspath(p))
        self.settle = settle
        self.views: dict[str, FileView] = {}
        self.next_look: float | None = None  # when a pending file should be looked at again
        self._seen: dict[str, tuple[Signature, float]] = {}  # signature, since when
        self._read: dict[str, Signature] = {}  # the signature last parsed
        self._missing_dirs: set[str] = set()

    def watch_dirs(self) -> list[str]:
        """The directories whose events matter (the watched ones, and those of named files)."""
        return sorted({*self.dirs, *(os.path.dirname(f) for f in self.files)})

    def owns(self, source: str) -> bool:
        """Whether the spec file a container came from (``io.gantry.source``) is one of ours
        that we can judge now (a directory that cannot be listed is not judged)."""
        directory = os.path.dirname(source)
        if directory in self._missing_dirs:
            return False
        return source in self.files or (directory in self.dirs
                                        and is_spec_name(os.path.basename(source)))

    def _present(self) -> list[str]:
        """Spec files there now. A watched directory that cannot be listed keeps its files'
        views (an unmounted directory is not a deleted one)."""
        present = [f for f in self.files if os.path.isfile(f)]
        missing = set()
        for d in self.dirs:
            try:
                names = os.listdir(d)
            except OSError as exc:
                missing.add(d)
                if d not in self._missing_dirs:
                    log.warning("cannot list %s (%s): its projects stay as they are", d,
                                exc.strerror or exc)
                present += [p for p in self.views if os.path.dirname(p) == d]
                continue
            present += [os.path.join(d, n) for n in names
                        if is_spec_name(n) and os.path.isfile(os.path.join(d, n))]
        self._missing_dirs = missing
        return sorted(set(present))

    def scan(self, now: float, writing: Paths = frozenset(), renamed: Paths = frozenset()
             ) -> bool:
        """Look at every spec file; answer whether a view changed (a file was read, went or
        came). From inotify: ``writing``, paths open for writing; ``renamed``, paths renamed
        into place and not written since (complete)."""
        present = self._present()
        changed = False
        for path in [p for p in self.views if p not in present]:
            for table in (self.views, self._seen, self._read):
                table.pop(path, None)
            changed = True
        owners = {v.project: p for p, v in self.views.items() if v.state != "conflict"}
        self.next_look = None
        for path in present:
            if os.path.dirname(path) in self._missing_dirs:
                continue
            project = project_of(path)
            owner = owners.setdefault(project, path)
            if owner != path:
                changed |= self._conflict(path, project, owner)
            else:
                changed |= self._look(path, now, path in writing, path in renamed)
        return changed

    def _look(self, path: str, now: float, writing: bool, renamed: bool) -> bool:
        sig = _signature(path)
        if sig is None:
            return False  # gone since it was listed: the next scan drops it
        seen = self._seen.get(path)
        if seen is None or seen[0] != sig:
            self._seen[path] = seen = (sig, now)
        # Still for `settle` seconds: since we first saw it so, or by its mtime (a file that
        # was there before the watcher started is read at once).
        still = max(now - seen[1], time.time() - sig[0] / 1e9)
        if writing or (still < self.settle and not renamed):
            # Open for writing: its close wakes the watcher; look again anyway, unhurried.
            self._later(now + (self.settle if writing else max(0.05, self.settle - still)))
            return self._set(path, "pending")
        if self._read.get(path) == sig:
            return False
        try:
            config, error = load_config(path), ""
        except ConfigError as exc:
            config, error = None, str(exc)
        if _signature(path) != sig:  # changed while read: look again once settled
            self._later(now + self.settle)
            return self._set(path, "pending")
        self._read[path] = sig
        old = self.views.get(path)
        if config is None:  # the last valid config stays what applies
            self.views[path] = FileView(path, project_of(path), "invalid",
                                        old.config if old else None, error)
        else:
            self.views[path] = FileView(path, project_of(path), "loaded", config)
        return True

    def _later(self, when: float) -> None:
        self.next_look = when if self.next_look is None else min(self.next_look, when)

    def _set(self, path: str, state: str) -> bool:
        """Mark a file pending (keeping its last valid config); answer whether that is news."""
        old = self.views.get(path)
        if old is not None and old.state == state:
            return False
        self.views[path] = FileView(path, project_of(path), state, old.config if old else None)
        return True

    def _conflict(self, path: str, project: str, owner: str) -> bool:
        old = self.views.get(path)
        if old is not None and old.state == "conflict":
            return False
        self.views[path] = FileView(path, project, "conflict",
                                    error=f"project {project!r} already comes from {owner}")
        self._read.pop(path, None)
        self._seen.pop(path, None)
        return True

    def projects(self) -> dict[str, FileView]:
        """project -> its file's view, for every file with a config to apply (loaded, or the
        last valid one while the file is invalid or being written)."""
        return {v.project: v for v in self.views.values()
                if v.state != "conflict" and v.config is not None}

    def held(self) -> set[str]:
        """Projects whose file is there but was never read valid: what runs stays as it is."""
        return {v.project for v in self.views.values()
                if v.state != "conflict" and v.config is None}


class Wakeups:
    """What wakes the watcher: inotify events on the watched directories, and :meth:`poke`
    (a signal handler, safe: one byte down a pipe). Tracks which files are open for writing.

    Without inotify (not Linux, or the watch limit reached) the watcher polls instead."""

    MASK_NAMES = ("MODIFY", "CLOSE_WRITE", "CREATE", "DELETE", "MOVED_FROM", "MOVED_TO",
                  "ATTRIB", "DELETE_SELF", "MOVE_SELF")

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs
        self.writing: set[str] = set()  # modified, not closed yet
        self.renamed: set[str] = set()  # moved in, not modified since
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wds: dict[int, str] = {}
        self.inotify = None
        try:
            import inotify_simple

            self._flags = inotify_simple.flags
            self.inotify = inotify_simple.INotify()
        except (ImportError, OSError) as exc:
            log.warning("inotify unavailable (%s): polling the spec files instead", exc)
        self._mask = 0
        if self.inotify is not None:
            for name in self.MASK_NAMES:
                self._mask |= getattr(self._flags, name)
            self._add_watches()

    @property
    def uses_inotify(self) -> bool:
        return self.inotify is not None

    def _add_watches(self) -> None:
        """Watch every directory not yet watched (one may come back after it went)."""
        assert self.inotify is not None
        watched = set(self._wds.values())
        for d in self.dirs:
            if d in watched:
                continue
            try:
                self._wds[self.inotify.add_watch(d, self._mask)] = d
            except OSError as exc:
                log.debug("cannot watch %s yet: %s", d, exc)

    def poke(self) -> None:
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # full: a wake-up is pending anyway

    def wait(self, timeout: float) -> None:
        """Block until an event, a poke or the timeout."""
        fds = [self._read_fd] + ([self.inotify.fileno()] if self.inotify else [])
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self._read_fd in ready:
            try:
                while os.read(self._read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
        if self.inotify is not None:
            self._events()

    def _events(self) -> None:
        assert self.inotify is not None
        f = self._flags
        for event in self.inotify.read(timeout=0):
            if event.mask & f.Q_OVERFLOW:
                self.writing.clear()  # events were lost: fall back to the settle time
                self.renamed.clear()
                continue
            if event.mask & f.IGNORED:
                self._wds.pop(event.wd, None)
                continue
            d = self._wds.get(event.wd)
            if d is None or not event.name:
                continue
            path = os.path.join(d, event.name)
            if event.mask & f.MODIFY:
                self.writing.add(path)
            if event.mask & (f.CLOSE_WRITE | f.DELETE | f.MOVED_FROM | f.MOVED_TO):
                self.writing.discard(path)
            if event.mask & f.MOVED_TO:
                self.renamed.add(path)
            elif event.mask & (f.MODIFY | f.CREATE | f.DELETE | f.MOVED_FROM):
                self.renamed.discard(path)
        self._add_watches()

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
        os.close(self._read_fd)
        os.close(self._write_fd)

