"""Progress reporting for lifecycle operations.

The lifecycle calls a :class:`Reporter`; the CLI uses :class:`ConsoleReporter` (one line per step
with the elapsed time, plus the live connection count while draining); gantryd passes its own
subclass (for example one that also writes the step into etcd). The base class logs through
``logging`` so a library user who passes nothing still gets a trace.

Methods (all optional to override):

* ``step(message)``  -- a lifecycle step starts or ends ("pulling ...", "switched route ...").
* ``waiting(message)`` -- a periodic update while waiting (ready checks, lock).
* ``draining(container_id, live, remaining)`` -- live connections left on a draining container.
* ``warning(message)`` -- something went wrong but the operation carries on.
* ``pull_progress(component, ref, event)`` -- one event of Docker's pull stream (a dict);
  ``event`` None: the pull ended (done or failed).
* ``build_progress(component, summary, started)`` -- a build went on (:mod:`gantry.buildprogress`);
  ``started``: the steps it began; ``summary`` None: the build ended.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Mapping, Sequence, TextIO

from .buildprogress import BuildSummary
from .liveline import LiveLine, is_terminal
from .pullprogress import PullSummary
from .runtime import short_ref

log = logging.getLogger("gantry.progress")


class Reporter:
    """Default reporter: everything goes to the ``gantry.progress`` logger."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, message: str) -> None:
        log.info("%s", message)

    def waiting(self, message: str) -> None:
        log.debug("%s", message)

    def draining(self, container_id: str, live: int, remaining: float) -> None:
        log.info("draining %s: %d live connection(s), %.0fs left", container_id[:12], live,
                 remaining)

    def warning(self, message: str) -> None:
        log.warning("%s", message)

    def pull_progress(self, component: str, ref: str,
                      event: Mapping[str, Any] | None) -> None:
        pass  # per-layer events are too many for a log; the steps say pulling/pulled

    def build_progress(self, component: str, summary: BuildSummary | None,
                       started: Sequence[str] = ()) -> None:
        for step in started:
            log.debug("%s: build step %s", component, step)


class NullReporter(Reporter):
    """Reports nothing (tests, quiet library use)."""

    def step(self, message: str) -> None:
        pass

    def waiting(self, message: str) -> None:
        pass

    def draining(self, container_id: str, live: int, remaining: float) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


class ConsoleReporter(Reporter):
    """Human output: ``[  1.2s] message``, one line per step.

    Drain progress is printed when the live count changes, and at most every
    ``drain_every`` seconds otherwise, so a long drain does not flood the terminal.
    On a terminal (``live``, default: the stream is a tty) a pull shows its progress on one
    line redrawn in place (:mod:`gantry.pullprogress`); elsewhere only the step lines.
    """

    def __init__(self, stream: TextIO | None = None, drain_every: float = 5.0,
                 live: bool | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self.drain_every = drain_every
        self._last_drain: tuple[str, int, float] | None = None
        if live is None:
            live = is_terminal(self.stream)
        self._live = LiveLine(self.stream) if live else None
        self._pulls: dict[tuple[str, str], PullSummary] = {}

    def _line(self, text: str) -> None:
        if self._live is not None:
            self._live.clear()
        self.stream.write(f"[{self.elapsed():6.1f}s] {text}\n")
        self.stream.flush()

    def step(self, message: str) -> None:
        log.debug("%s", message)
        self._line(message)

    def waiting(self, message: str) -> None:
        log.debug("%s", message)
        self._line(message)

    def draining(self, container_id: str, live: int, remaining: float) -> None:
        now = time.monotonic()
        last = self._last_drain
        if last and last[0] == container_id and last[1] == live \
                and now - last[2] < self.drain_every:
            return
        self._last_drain = (container_id, live, now)
        self._line(f"draining {container_id[:12]}: {live} live connection(s), "
                   f"{remaining:.0f}s left")

    def warning(self, message: str) -> None:
        log.debug("%s", message)
        self._line(f"warning: {message}")

    def pull_progress(self, component: str, ref: str,
                      event: Mapping[str, Any] | None) -> None:
        if self._live is None:
            return
        key = (component, ref)
        if event is None:
            self._pulls.pop(key, None)
            self._live.clear()
            return
        summary = self._pulls.setdefault(key, PullSummary())
        summary.feed(event)
        # The counts before the image: a line too long for the terminal is cut at the end.
        counts = summary.line()
        self._live.show(f"[{self.elapsed():6.1f}s] {component}: pulling "
                        + (f"{counts}  {short_ref(ref)}" if counts else short_ref(ref)))

    def build_progress(self, component: str, summary: BuildSummary | None,
                       started: Sequence[str] = ()) -> None:
        if self._live is None:  # plain output: one line per build step
            for step in started:
                self._line(f"{component}: build step {step}")
        elif summary is None:
            self._live.clear()
        elif summary.line():
            self._live.show(f"[{self.elapsed():6.1f}s] {component}: building {summary.line()}")
