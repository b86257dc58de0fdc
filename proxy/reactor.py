"""The reactor the daemon runs on: Twisted's epoll reactor made cheaper per event.

- Twisted wraps every ready descriptor in `log.callWithLogger`, which builds a logging context
  (a dict and a logPrefix() call) per event only so that log lines carry a "system" prefix.
  The proxy logs nothing per event, so it dispatches directly.
- A bare read event (most events) calls doRead without the generic `_doReadOrWrite` checks.
- `forget` unregisters a socket about to be closed without an epoll_ctl call.
- A write event of a connecting socket means it connected (`connect_errors_as_hangups`).
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log


class ProxyReactor(EPollReactor):
    # A connect that failed makes epoll report EPOLLERR|EPOLLHUP, which goes to the
    # selectable's connectionLost, never to doWrite (see forward.ClientSide.dial_done).
    connect_errors_as_hangups = True

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout,
                                       len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == EPOLLIN:
                # The common case, a bare read event: what _doReadOrWrite does with it,
                # without its checks for hang-ups, write events and fileno() == -1.
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    self._disconnectSelectable(selectable, why, True)
            else:
                handle(selectable, fd, event)

    doIteration = doPoll

    def write_to_read(self, selectable: Any) -> None:
        """Turn a registered writer into a reader with one epoll_ctl(MOD) (a connect that
        completed), where addReader + removeWriter make two."""
        fd = selectable.fileno()
        if fd in self._writes and fd not in self._reads:
            self._poller.modify(fd, EPOLLIN)
            self._writes.discard(fd)
            self._reads.add(fd)
        else:
            self.addReader(selectable)
            self.removeWriter(selectable)

    def forget(self, selectable: Any) -> None:
        """Drop a socket that is about to be closed from the reactor's books, without the
        epoll_ctl(DEL) removeReader/removeWriter would make: closing a socket's only
        descriptor takes it out of the epoll set anyway (the proxy never dups sockets)."""
        fd = selectable.fileno()
        self._reads.discard(fd)
        self._writes.discard(fd)
        self._selectables.pop(fd, None)


def install() -> Any:
    """Install ProxyReactor as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = ProxyReactor()
    installReactor(reactor)
    return reactor
