"""Starting a long-lived helper process detached from its starter, and waiting until it
answers (the proxy daemon, the listener keeper, an upgrade's new daemon).

Only the standard library.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

# Exit status of a daemon that found another one holding its lock (EX_TEMPFAIL): it lost a
# start race, and the winner will answer.
EX_ALREADY_RUNNING = 75

T = TypeVar("T")


class Exited(Exception):
    """The started process exited (other than losing a start race) before answering."""

    def __init__(self, status: int):
        super().__init__(f"exited with status {status}")
        self.status = status


def start_detached(command: Sequence[str], log_path: str | None) -> subprocess.Popen:
    """Start `command` in a session of its own, so that it outlives its starter and a signal
    to the starter's process group (kill -9 of a daemon and its children); stdin is
    /dev/null, output is appended to `log_path` (dropped if None)."""
    if log_path is not None:
        Path(log_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.devnull, "rb") as devnull, \
            open(log_path or os.devnull, "ab") as log:
        return subprocess.Popen(list(command), stdin=devnull, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)


def wait_answering(process: subprocess.Popen, answers: Callable[[], T | None],
                   timeout: float) -> T:
    """Poll `answers()` until it gives something other than None and return that. Raise
    Exited if `process` exits first with another status than EX_ALREADY_RUNNING, and
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = answers()
        if answer is not None:
            return answer
        if process.poll() is not None and process.returncode != EX_ALREADY_RUNNING:
            raise Exited(process.returncode)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer within {timeout:g}s")
        time.sleep(0.05)
