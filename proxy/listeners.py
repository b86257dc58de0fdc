"""Where a route's listening socket comes from, so that it can outlive the proxy process.

- `keeper` (the default): the listener keeper (proxy.keeper, a process of its own) binds and
  holds it; the proxy adopts a copy. After a kill -9, a crash or an upgrade new connections
  wait in the kernel's backlog until the next proxy adopts the socket again.
- `systemd`: sockets systemd passed in (`LISTEN_FDS`: the socket unit's, and those kept in
  the service's fd store), matched to routes by address. A route added at run time is bound
  here and pushed into the fd store, so that it comes back after a restart.
- `direct`: bound here with listenTCP; it dies with the process (connections are refused
  until the next proxy binds again).

Either way the proxy's Port is a copy: closing it (SIGTERM, kill -9, handover) leaves the
listener open. Only `release` (the route was removed or moved to another address) closes
it for good, so that clients are refused instead of queued on a socket nobody serves.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, MutableMapping
from typing import Any

from twisted.internet import error

from proxy import forward
from proxy.address import Address
from proxy.errors import Conflict
from proxy.keeper import (KeeperClient, KeeperError, KeeperNotRunning, KeeperUnavailable,
                          bind_listener, ensure_keeper)
from proxy.paths import keeper_socket_path

log = logging.getLogger("proxy.listeners")

SD_LISTEN_FDS_START = 3


class Listeners:
    """`direct`: bind in this process (the base of the other sources)."""

    mode = "direct"

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def listen(self, address: Address, factory: Any, backlog: int) -> Any:
        """A listening Port on `address` for `factory`; Conflict if it cannot be bound."""
        try:
            return forward.listen(self.reactor, address.port, factory, backlog, address.host)
        except error.CannotListenError as e:
            raise Conflict(f"cannot listen on {address}: {e.socketError}") from None

    def release(self, address: Address) -> None:
        """No route listens on `address` any more: close it for good."""

    def retain(self, addresses: Iterable[Address]) -> None:
        """Release what is held for addresses no route uses (after the routes are restored)."""

    def ready(self) -> None:
        """The daemon serves (its control socket listens)."""

    def _adopt(self, sock: socket.socket, factory: Any) -> Any:
        sock.setblocking(False)  # Twisted expects it; the holder never accepts
        return forward.adopt(self.reactor, sock, factory)


class KeeperListeners(Listeners):
    """Sockets held by the listener keeper on `path` (started if it does not answer)."""

    mode = "keeper"

    def __init__(self, reactor: Any, path: str, log_path: str | None = None):
        super().__init__(reactor)
        self.path = path
        self.log_path = log_path
        self.client = KeeperClient(path)

    def listen(self, address: Address, factory: Any, backlog: int) -> Any:
        try:
            try:
                sock = self.client.get(str(address), backlog)
            except KeeperUnavailable:
                log.info("starting the listener keeper on %s", self.path)
                sock = ensure_keeper(self.path, self.log_path).get(str(address), backlog)
        except KeeperUnavailable as e:
            # Serving without the keeper beats not serving: only a restart would queue.
            log.error("%s; listening on %s directly", e, address)
            return super().listen(address, factory, backlog)
        except KeeperError as e:
            raise Conflict(f"cannot listen on {address}: {e}") from None
        with sock:
            return self._adopt(sock, factory)

    def release(self, address: Address) -> None:
        try:
            self.client.release(str(address))
        except KeeperError as e:
            log.warning("could not release %s: %s", address, e)

    def retain(self, addresses: Iterable[Address]) -> None:
        keep = {str(a) for a in addresses}
        try:
            for held in self.client.listeners():
                if held not in keep:
                    log.info("releasing %s: no route listens there", held)
                    self.client.release(held)
        except KeeperNotRunning:
            pass  # it holds nothing, then
        except KeeperError as e:
            log.warning("could not list the keeper's listeners: %s", e)


class SystemdListeners(Listeners):
    """Inherited sockets, and the fd store of the service for those bound at run time.

    `held` keeps one copy per address for the process's life (systemd holds another), so a
    route that stops and starts listening again adopts the same socket.
    """

    mode = "systemd"

    def __init__(self, reactor: Any, inherited: list[tuple[str, socket.socket]],
                 notify_socket: str | None):
        super().__init__(reactor)
        self.notify_socket = notify_socket
        self.held: dict[Address, socket.socket] = {}
        self.stored: set[Address] = set()  # in the fd store (ours to remove), not a unit's
        for name, sock in inherited:
            address = _tcp_address(sock)
            if address is None:
                sock.close()
                continue
            self.held[address] = sock
            if name == fd_name(address):
                self.stored.add(address)

    def listen(self, address: Address, factory: Any, backlog: int) -> Any:
        sock = self.held.get(address)
        if sock is None:
            try:
                sock = bind_listener(address, backlog)
            except OSError as e:
                raise Conflict(f"cannot listen on {address}: {e}") from None
            self.held[address] = sock
            if sd_notify(f"FDSTORE=1\nFDNAME={fd_name(address)}", sock.fileno(),
                         self.notify_socket):
                self.stored.add(address)
            else:
                log.warning("no NOTIFY_SOCKET: %s is not kept across restarts", address)
        return self._adopt(sock, factory)

    def release(self, address: Address) -> None:
        if address in self.stored:
            sd_notify(f"FDSTOREREMOVE=1\nFDNAME={fd_name(address)}", None, self.notify_socket)
            self.stored.discard(address)
            self.held.pop(address).close()
        elif address in self.held:
            log.warning("%s comes from the socket unit: systemd keeps listening there", address)

    def retain(self, addresses: Iterable[Address]) -> None:
        for address in self.stored - set(addresses):
            log.info("removing %s from the fd store: no route listens there", address)
            self.release(address)

    def ready(self) -> None:
        sd_notify("READY=1", None, self.notify_socket)


def fd_name(address: Address) -> str:
    """The fd store name of a listener (names may not contain ':')."""
    return "listen-" + str(address).replace(":", "_")


def _tcp_address(sock: socket.socket) -> Address | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def inherited_sockets(environ: MutableMapping[str, str] = os.environ
                      ) -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed to this process (`LISTEN_FDS`, when `LISTEN_PID` is ours),
    with their names; removes the variables (as sd_listen_fds does) so that no child takes
    them for its own."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(environ.get("LISTEN_FDS", "0") or 0)
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    out = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket
            continue
        out.append((names[i] if i < len(names) else "", sock))
    return out


def sd_notify(state: str, fd: int | None, path: str | None) -> bool:
    """Send `state` (with `fd` attached) to systemd's notification socket; False if none."""
    if not path:
        return False
    if path.startswith("@"):  # the abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            if fd is None:
                s.send(state.encode())
            else:
                socket.send_fds(s, [state.encode()], [fd])
        except OSError as e:
            log.warning("cannot notify systemd on %s: %s", path, e)
            return False
    return True


def control_socket(inherited: list[tuple[str, socket.socket]],
                   path: str) -> socket.socket | None:
    """The inherited unix socket listening on `path` (the socket unit's control socket),
    taken out of `inherited`."""
    for i, (_, sock) in enumerate(inherited):
        if sock.family == socket.AF_UNIX and sock.getsockname() in (path, path.encode()):
            del inherited[i]
            return sock
    return None


def systemd_applies(environ: MutableMapping[str, str] = os.environ) -> bool:
    """systemd passed sockets to this very process."""
    return environ.get("LISTEN_PID") == str(os.getpid())


def open_listeners(mode: str, reactor: Any, control_path: str, log_path: str | None = None
                   ) -> tuple[Listeners, socket.socket | None]:
    """The listener source for `mode` (`auto`: systemd when it passed this process sockets,
    else the keeper of `control_path`), and the control socket if systemd passed one."""
    if mode == "auto":
        mode = "systemd" if systemd_applies() else "keeper"
    if mode == "direct":
        return Listeners(reactor), None
    if mode == "keeper":
        return KeeperListeners(reactor, keeper_socket_path(control_path), log_path), None
    if mode != "systemd":
        raise ValueError(f"unknown listeners mode {mode!r}")
    inherited = inherited_sockets()
    control = control_socket(inherited, control_path)
    # Ours alone: a child must not notify systemd in our name.
    notify = os.environ.pop("NOTIFY_SOCKET", None)
    return SystemdListeners(reactor, inherited, notify), control
