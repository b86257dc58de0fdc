"""The reactor the daemon runs on: Twisted's epoll reactor minus per-event log context.

Twisted wraps every ready descriptor in `log.callWithLogger`, which builds a logging context
(a dict and a logPrefix() call) per event only so that log lines carry a "system" prefix. The
proxy logs nothing per event, so it dispatches directly: this is the cheapest win on
requests/s there is without leaving Twisted.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor


class ProxyReactor(EPollReactor):
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
            if selectable is not None:
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> Any:
    """Install ProxyReactor as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = ProxyReactor()
    installReactor(reactor)
    return reactor
