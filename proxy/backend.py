"""A backend: an address, the connections accepted for it, its counters and drain waiters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer, task

from proxy.address import Address

if TYPE_CHECKING:
    from proxy.forward import ClientSide

ACTIVE = "active"
DRAINING = "draining"


class Backend:
    """One backend of one route.

    `connections` holds every live connection (a ClientSide; a connection is live from accept
    until both its client and backend sockets are closed), so `live` is exact at all times.
    Byte counts of live connections are read from the connections themselves, which keeps the
    per-chunk work in the forwarding path to one integer add.
    """

    def __init__(self, address: Address, on_idle: Callable[[Backend], None] | None = None):
        self.address = address
        self.state = ACTIVE
        self.weight = 1  # share of new connections while active (0 in the API once draining)
        self.connections: set[ClientSide] = set()
        self.opened = 0
        self.closed = 0
        self.errors = 0
        self._bytes_in_closed = 0
        self._bytes_out_closed = 0
        self._waiters: list[defer.Deferred[None]] = []
        # Called when live drops to zero; the route uses it to forget drained backends.
        self._on_idle = on_idle
        self._idle_reaper: task.LoopingCall | None = None

    # -- counters -------------------------------------------------------------------------
    @property
    def live(self) -> int:
        return len(self.connections)

    @property
    def bytes_in(self) -> int:
        """Bytes received from clients (and forwarded to this backend)."""
        return self._bytes_in_closed + sum(c.nbytes for c in self.connections)

    @property
    def bytes_out(self) -> int:
        """Bytes received from this backend (and forwarded to clients)."""
        return self._bytes_out_closed + sum(c.backend_nbytes for c in self.connections)

    def connection_opened(self, conn: ClientSide) -> None:
        self.opened += 1
        self.connections.add(conn)

    def connection_closed(self, conn: ClientSide) -> None:
        self.connections.discard(conn)
        self.closed += 1
        self._bytes_in_closed += conn.nbytes
        self._bytes_out_closed += conn.backend_nbytes
        if not self.connections:
            self._fire_drained()

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "state": self.state,
            "weight": self.weight if self.state == ACTIVE else 0,
            "live": self.live,
            "opened": self.opened,
            "closed": self.closed,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "errors": self.errors,
        }

    # -- draining -------------------------------------------------------------------------
    def wait_drained(self) -> defer.Deferred[None]:
        """A Deferred that fires once no connection is live (at once if none is)."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    async def drained_within(self, timeout: float, clock: Any) -> bool:
        """Wait until no connection is live, at most `timeout` seconds; True if it happened."""
        try:
            await self.wait_drained().addTimeout(timeout, clock)
            return True
        except defer.TimeoutError:
            return False

    def _fire_drained(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        if self._on_idle is not None:
            self._on_idle(self)

    def close_all(self) -> int:
        """Abort every live connection (both sockets, immediately); return how many."""
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        return len(conns)

    def set_state(self, state: str, idle_timeout: float | None, clock: Any) -> None:
        """Become active or draining; a draining backend with an idle timeout reaps idle
        connections (no byte either way for `idle_timeout` seconds)."""
        self.state = state
        self.stop_reaper()
        if state == DRAINING and idle_timeout:
            reaper = IdleReaper(self, idle_timeout, clock)
            self._idle_reaper = task.LoopingCall(reaper.sweep)
            self._idle_reaper.clock = clock
            # Sweep a few times per timeout so a connection closes soon after going idle.
            self._idle_reaper.start(max(idle_timeout / 4, 0.05), now=True)

    def stop_reaper(self) -> None:
        if self._idle_reaper is not None and self._idle_reaper.running:
            self._idle_reaper.stop()
        self._idle_reaper = None


class IdleReaper:
    """Closes connections whose byte counters have not moved for `timeout` seconds, unless
    the client spoke last (its request is still being answered: only the drain deadline may
    cut it).

    Sampling counters from a timer instead of stamping the time on every chunk keeps the
    forwarding path free of clock reads.
    """

    def __init__(self, backend: Backend, timeout: float, clock: Any):
        self.backend = backend
        self.timeout = timeout
        self.clock = clock
        self._seen: dict[ClientSide, tuple[int, float]] = {}

    def sweep(self) -> None:
        now = self.clock.seconds()
        seen: dict[ClientSide, tuple[int, float]] = {}
        for conn in list(self.backend.connections):
            total = conn.nbytes + conn.backend_nbytes
            last_total, since = self._seen.get(conn, (-1, now))
            if total != last_total:
                since = now
            if now - since >= self.timeout and not conn.awaits_answer:
                conn.close_idle()
            else:
                seen[conn] = (total, since)
        self._seen = seen
