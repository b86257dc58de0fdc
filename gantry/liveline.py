"""A status line redrawn in place on a terminal (``\\r`` + erase), below the ordinary lines.

Only for terminals: on a pipe or a file nothing is drawn, so logs and CI output keep plain
lines with no escape sequences.
"""
from __future__ import annotations

import os
from typing import TextIO

ERASE = "\r\x1b[K"  # back to column 0, erase to the end of the line


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LiveLine:
    """The one line currently drawn on ``stream`` (call :meth:`clear` before printing)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = ""  # the text on screen, "" when none

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 80

    def show(self, text: str) -> None:
        # A line longer than the terminal would wrap, and \r only goes back to the start of
        # the last row: cut it to fit instead.
        text = text[:max(1, self._width() - 1)]
        if text and text != self.shown:
            self.stream.write(ERASE + text)
            self.stream.flush()
            self.shown = text

    def clear(self) -> None:
        if self.shown:
            self.stream.write(ERASE)
            self.stream.flush()
            self.shown = ""
