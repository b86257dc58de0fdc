"""Local per-component lock: ``fcntl.flock`` on ``<lock dir>/<project>.<component>.lock``.

Every mutating lifecycle operation (update, start, stop, kill, recover, a monitor's replacement)
runs under this lock, so two gantry processes -- or gantry and gantryd on the same host -- never
work on the same component at once. The kernel drops a flock when its holder dies (even by
kill -9), so a crashed gantry never wedges the component.

Lock dir: ``$GANTRY_LOCK_DIR``, else ``/run/gantry/locks`` as root, else
``$XDG_RUNTIME_DIR/gantry/locks``, else ``<tmp>/gantry-<uid>/locks``.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import LockBusy


def default_lock_dir() -> Path:
    env = os.environ.get("GANTRY_LOCK_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/gantry/locks")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "gantry" / "locks"
    return Path(tempfile.gettempdir()) / f"gantry-{os.geteuid()}" / "locks"


class ComponentLock:
    """An exclusive lock on one component of one project (re-entrant within one object).

    ``wait``: True blocks until the lock is free (calling ``on_wait`` once with the holder's
    description); False raises :class:`LockBusy` at once; a number waits at most that many seconds.
    """

    def __init__(
        self,
        project: str,
        component: str,
        lock_dir: Path | None = None,
        wait: bool | float = True,
        on_wait: Callable[[str], None] | None = None,
        holder: str = "",
    ) -> None:
        self.path = (lock_dir or default_lock_dir()) / f"{project}.{component}.lock"
        self.name = f"{project}.{component}"
        self.wait = wait
        self.on_wait = on_wait
        self.holder = holder or f"pid {os.getpid()}"
        self._fd: int | None = None
        self._depth = 0

    def _holder_text(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message a waiting process prints (advisory only).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder}\n".encode(), 0)
        self._fd = fd
        self._depth = 1

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        held_by = self._holder_text()
        if self.wait is False:
            raise LockBusy(f"component {self.name} is busy ({held_by}); retry later or use --wait")
        if self.on_wait:
            self.on_wait(f"waiting for the lock of {self.name}, held by {held_by}")
        if self.wait is True:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + float(self.wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"component {self.name} is still busy ({held_by}) "
                                   f"after {float(self.wait):.0f}s") from None
                time.sleep(0.1)

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        fd, self._fd = self._fd, None
        assert fd is not None
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "ComponentLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
