"""Showing a followed rollout: a line per transition and, on a terminal, a per-host table
redrawn in place under them; plain lines elsewhere (CI logs); JSON lines; or nothing."""
from __future__ import annotations

import json
from typing import TextIO

from .follow import Follower, Transition, version_label

TTY, PLAIN, JSON, QUIET = "tty", "plain", "json", "quiet"
UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor to the start of the line n up, clear below


def mode_for(stream: TextIO, json_lines: bool, quiet: bool) -> str:
    if quiet:
        return QUIET
    if json_lines:
        return JSON
    return TTY if stream.isatty() else PLAIN


def line(t: Transition) -> str:
    return f"+{t.elapsed:6.1f}s  {t.machine}  {t.component}  r{t.revision}  {t.detail}"


def _seconds(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{sign}{value:.1f}s"


class View:
    """Where a follow's transitions, table and summary go."""

    def __init__(self, out: TextIO, mode: str):
        self.out = out
        self.mode = mode
        self.drawn = 0  # lines of the table now on the screen (tty)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _clear(self) -> str:
        drawn, self.drawn = self.drawn, 0
        return UP_AND_CLEAR.format(n=drawn) if drawn else ""

    def transition(self, t: Transition) -> None:
        if self.mode == JSON:
            self._write(json.dumps(t.to_json()) + "\n")
        elif self.mode in (TTY, PLAIN):
            # On a terminal the line goes above the table: clear it, print, draw it again.
            self._write(self._clear() + line(t) + "\n")

    def table(self, follower: Follower, elapsed: float) -> None:
        """The per-host table, redrawn in place (tty only)."""
        if self.mode != TTY:
            return
        rows = [f"  {'MACHINE':<10} {'COMPONENT':<10} {'REV':<5} {'STATUS':<10} "
                f"{'VERSION':<22} SINCE"]
        for (component, machine), t in sorted(follower.hosts.items()):
            rows.append(f"  {machine:<10} {component:<10} {'r' + str(t.revision):<5} "
                        f"{t.status:<10} {version_label(t.image, follower.tags):<22} "
                        f"+{t.changed:.1f}s")
        rows.append(f"  elapsed {elapsed:.1f}s")
        self._write(self._clear() + "\n".join(rows) + "\n")
        self.drawn = len(rows)

    def summary(self, follower: Follower, elapsed: float, outcome: str) -> None:
        """Per host: version, start, duration; then the total time."""
        if self.mode not in (TTY, PLAIN):
            return
        rows = [f"{'MACHINE':<10} {'COMPONENT':<10} {'VERSION':<22} {'START':>8} "
                f"{'DURATION':>9}  STATUS"]
        for r in follower.summary():
            rows.append(f"{r.machine:<10} {r.component:<10} {r.version:<22} "
                        f"{_seconds(r.start, '+'):>8} {_seconds(r.duration):>9}  {r.status}")
        rows.append(f"{outcome} in {elapsed:.1f}s")
        self._write(self._clear() + "\n".join(rows) + "\n")
