"""SIGHUP redeploys (hanoverd's rule), for ``gantry monitor`` and ``gantry update -m``.

A SIGHUP asks for a redeploy: the config is read again, the component's image rebuilt
(``build``) or its tag resolved again, and the component updated. A SIGHUP that arrives while
such an update has not switched the routes yet gives it up (its new container goes) and starts
over with the newest input; one that arrives after the switch lets it finish, then runs again.
So a burst of SIGHUPs ends with one deployment of what was there at the last one.

The signal handler only writes a byte to a pipe: a handler runs between two bytecodes of the
main thread, and one that took a lock the interrupted code held (``Event.set`` takes one)
would deadlock. A thread reads the pipe and sets :attr:`Hangups.requested`, the event the
update is given as ``cancel``, and every event registered with :meth:`Hangups.waking` (a
monitor's stop event), so that no wait outlasts a request.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator

from .config import ConfigError
from .errors import Cancelled, UpdateFailed


class Hangups:
    """SIGHUPs turned into an event (install once, from the main thread)."""

    def __init__(self) -> None:
        self.requested = threading.Event()  # a redeploy was asked for and not begun yet
        self._wakers: set[threading.Event] = set()
        self._lock = threading.Lock()

    def install(self) -> Hangups:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)

        def handle(signum: int, frame: Any) -> None:
            try:
                os.write(write_fd, b"h")
            except BlockingIOError:  # the pipe is full of requests not read yet: one is enough
                pass

        signal.signal(signal.SIGHUP, handle)
        threading.Thread(target=self._relay, args=(read_fd,), daemon=True,
                         name="gantry-sighup").start()
        return self

    def _relay(self, read_fd: int) -> None:
        while os.read(read_fd, 512):
            self.request()

    def request(self) -> None:
        """What a SIGHUP does: ask for a redeploy and end every registered wait."""
        self.requested.set()
        with self._lock:
            for event in self._wakers:
                event.set()

    @contextlib.contextmanager
    def waking(self, event: threading.Event) -> Iterator[threading.Event]:
        """Set ``event`` on every request while inside (and at once if one is pending)."""
        with self._lock:
            self._wakers.add(event)
        if self.requested.is_set():
            event.set()
        try:
            yield event
        finally:
            with self._lock:
                self._wakers.discard(event)


def redeploy(life: Any, load: Callable[[], Any], requested: threading.Event) -> Any:
    """Serve the pending requests: read the component (``load``), update it with
    ``requested`` as the cancel event; again while a request came in meanwhile. Answers the
    component last read (None when none could be). A failed update or an unreadable config is
    reported; what runs keeps running."""
    rep = life.reporter
    component = None
    while requested.is_set():
        requested.clear()
        try:
            component = load()
        except ConfigError as exc:
            rep.warning(f"SIGHUP: the config cannot be read, nothing redeployed:\n{exc}")
            continue
        rep.step(f"{component.name}: SIGHUP: redeploying")
        try:
            life.update(component, cancel=requested)
        except Cancelled as exc:
            rep.step(f"{component.name}: a newer SIGHUP gave this update up before its switch "
                     f"({exc}); starting over with the newest input")
        except UpdateFailed as exc:
            rep.warning(f"SIGHUP redeploy failed: {exc}")
    return component


def monitor(life: Any, component: Any, load: Callable[[], Any], hangups: Hangups) -> None:
    """``Lifecycle.monitor`` of ``component`` that redeploys on SIGHUP and then monitors the
    newest component; ends when the component has no live container (or on Ctrl-C)."""
    while True:
        with hangups.waking(threading.Event()) as stop:
            life.monitor(component, stop)
        if not hangups.requested.is_set():
            return  # the component was stopped
        component = redeploy(life, load, hangups.requested) or component
