"""One line summarising a ``docker build`` in progress (pure: build events in, lines out).

The engine's builder streams ``{"stream": text}`` events: ``Step 3/7 : COPY www /www`` when a
step starts, then the step's own output (a ``RUN``'s), ``---> <id>`` markers and
``Successfully built``. :class:`BuildSummary` keeps the current step for a live line
(``step 3/7  COPY www /www``) and the last lines of the step's output, shown when a build
fails.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Any, Mapping

_STEP = re.compile(r"Step (\d+)/(\d+) : (.*)")
# The builder's own bookkeeping, not the output of a step.
_NOISE = re.compile(r" ---> |Removing intermediate container |Successfully (built|tagged) ")
TAIL = 10


class BuildSummary:
    """Folds the events of one build, in order."""

    def __init__(self) -> None:
        self.step = ""  # "3/7", "" before the first step
        self.instruction = ""  # "COPY www /www"
        self.output: deque[str] = deque(maxlen=TAIL)

    def feed(self, event: Mapping[str, Any]) -> list[str]:
        """Take one event; answers the steps it started (``3/7: COPY www /www``), for output
        that has no live line."""
        started = []
        for line in str(event.get("stream") or "").splitlines():
            match = _STEP.fullmatch(line.strip())
            if match:
                number, total, instruction = match.groups()
                self.step, self.instruction = f"{number}/{total}", instruction
                self.output.clear()  # what a failure shows is the failing step's output
                started.append(f"{number}/{total}: {instruction}")
            elif line.strip() and not _NOISE.match(line):
                self.output.append(line.rstrip())
        return started

    def line(self) -> str:
        """``step 3/7  COPY www /www``; '' before the first step."""
        return f"step {self.step}  {self.instruction}" if self.step else ""

    def where(self) -> str:
        """``step 3/7 (RUN make)``, for a failure; '' before the first step."""
        return f"step {self.step} ({self.instruction})" if self.step else ""
