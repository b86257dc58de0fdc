"""What ``gantry watch`` does next: the spec files' components against the host's (pure).

Per component, in this order: *stop* what a spec file no longer has (the component, or the
whole file), then *recover* what an interrupted operation left, then *start* what has no live
container and *replace* what runs another spec (:func:`gantry.labels.spec_digest`: image tag,
build, environment, ports, checks, timeouts...). Stops go first so that a component moved to
another file (project) finds its ports free.

Only containers made by this watcher are ever stopped for being absent: origin ``watch`` and
an ``io.gantry.source`` among the watched spec files (:meth:`SpecFiles.owns`). A project whose
file is there but has never been read valid is *held*: nothing of it is touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

Key = tuple[str, str]  # (project, component)


@dataclass(frozen=True)
class Desired:
    """One component as a spec file says it."""

    project: str
    source: str  # the spec file
    component: Any  # gantry.config.Component
    spec: str  # its spec_digest


@dataclass(frozen=True)
class Running:
    """One component as the host has it (Docker labels and proxy routes)."""

    project: str
    component: str
    source: str = ""  # the spec file its containers say they came from
    container: str = ""  # the live (routed) container, "" when none
    image: str = ""  # its digest-pinned image
    spec: str = ""  # its io.gantry.spec label
    others: int = 0  # containers besides the live one (and a canary): leftovers to clean
    owned: bool = False  # made by this watcher from one of its spec files


@dataclass(frozen=True)
class Action:
    kind: str  # stop | recover | start | replace
    key: Key
    desired: Desired | None
    reason: str


ORDER = ("stop", "recover", "start", "replace")


def plan(desired: Mapping[Key, Desired], running: Mapping[Key, Running], held: set[str],
         blocked: Callable[[Key, str], bool]) -> list[Action]:
    """The actions that bring ``running`` to ``desired``.

    ``held``: projects left alone. ``blocked(key, spec)``: an attempt at that spec failed
    and may not be retried yet (the failed one is not retried in a loop)."""
    actions = []
    for key, run in running.items():
        if key not in desired and run.owned and key[0] not in held:
            actions.append(Action("stop", key, None, "no longer in its spec file"))
    for key, want in desired.items():
        run = running.get(key) or Running(*key)
        change = (("start", "not running") if not run.container
                  else ("replace", "its spec changed") if run.spec != want.spec else None)
        if change is not None and not blocked(key, want.spec):
            actions.append(Action(change[0], key, want, change[1]))
        elif run.others:  # (an update recovers first anyway)
            actions.append(Action("recover", key, want, "leftover containers"))
    return sorted(actions, key=lambda a: (ORDER.index(a.kind), a.key))
