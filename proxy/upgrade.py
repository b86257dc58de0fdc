"""Upgrading a running proxy in place: a new daemon takes over from the old one.

1. `gantry-proxy upgrade` starts `gantry-proxy run --takeover` detached, with the old
   daemon's run options (from `GET /ping`) unless told otherwise.
2. The new daemon (everything imported already) calls `POST /handover`. The old one stops
   accepting (its Ports close; the keeper still holds the listening sockets, so new clients
   wait in the backlog instead of being refused), stops its metrics and control listeners,
   lets go of the state lock, answers, and then runs only until its live connections are
   done (bounded by its --shutdown-timeout, as on SIGTERM) and exits 0.
3. The new daemon takes the lock, restores the routes from the state file (adopting the
   keeper's sockets: the queued clients are accepted now) and listens on the control socket.
4. `upgrade` returns once the new pid answers `GET /ping`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from proxy.address import Address
from proxy.detach import Exited, start_detached, wait_answering
from proxy.errors import Conflict, ProxyError, ProxyNotRunning
from proxy.paths import log_path_for, retiring_socket_path

log = logging.getLogger("proxy.upgrade")

# `gantry-proxy run` options: argparse dest, key in `GET /ping`'s "options", flag.
RUN_OPTIONS = (("state", "state", "--state"), ("metrics", "metrics", "--metrics"),
               ("log_file", "logFile", "--log-file"),
               ("shutdown_timeout", "shutdownTimeout", "--shutdown-timeout"),
               ("listeners", "listeners", "--listeners"), ("verbose", "verbose", "--verbose"))


def run_options(state: str, metrics: Address | None, log_file: str | None,
                shutdown_timeout: float, verbose: bool, listeners: str) -> dict[str, Any]:
    """A daemon's run options, for `GET /ping` (`listeners`: the mode in effect)."""
    return {"state": state, "metrics": str(metrics) if metrics else None, "logFile": log_file,
            "shutdownTimeout": shutdown_timeout, "verbose": verbose, "listeners": listeners}


def run_argv(options: dict[str, Any]) -> list[str]:
    """The `gantry-proxy run` arguments for `options` (as run_options makes them)."""
    argv = []
    for _, key, flag in RUN_OPTIONS:
        value = options.get(key)
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


# -- the old daemon's side (in its reactor) ----------------------------------------------------

class Handover:
    """`POST /handover`: give the routes, the lock and the sockets up to a new daemon."""

    def __init__(self, reactor: Any, router: Any, lock: Any, socket_path: str,
                 options: dict[str, Any]):
        self.reactor = reactor
        self.router = router
        self.lock = lock
        self.socket_path = socket_path
        self.options = options
        self.ports: list[Any] = []  # control and metrics: their addresses go to the new one

    async def __call__(self) -> dict[str, Any]:
        from twisted.internet import defer
        if self.router.listeners.mode == "systemd":
            raise Conflict("this proxy runs under systemd: `systemctl restart` it instead")
        live = sum(b.live for b in self.router.all_backends())
        log.info("handing over to a new daemon (%d live connections stay here)", live)
        await self.router.stop_accepting()
        await defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])
        # Until we exit, drains of our connections (an update right after the upgrade) ask
        # us here too: proxy.client.drain counts what we still carry.
        from proxy.control import listen_control
        retiring = retiring_socket_path(self.socket_path, os.getpid())
        listen_control(self.reactor, self.router, retiring, self.options)
        self.router.save()
        self.router.state_path = None  # the state file is the new daemon's now
        self.lock.close()
        # Then as on SIGTERM: the shutdown trigger lets live connections finish, and we exit.
        # A reactor turn first, in which this answer is written out.
        self.reactor.callLater(0, self.reactor.stop)
        return {"pid": os.getpid(), "live": live}


# -- the new daemon's side ---------------------------------------------------------------------

def request_handover(socket_path: str) -> None:
    """Ask the daemon on `socket_path` to hand over (the caller then waits for the lock)."""
    from proxy.client import ProxyClient  # http.client: only a taking-over daemon needs it
    try:
        answer = ProxyClient(socket_path, timeout=30).handover()
        log.info("taking over from gantry-proxy %d (%d live connections finish there)",
                 answer["pid"], answer["live"])
    except ProxyNotRunning:
        log.info("no proxy answers on %s: starting afresh", socket_path)
    except ProxyError as e:  # it may have let go all the same: the lock tells
        log.warning("handover: %s", e)


# -- `gantry-proxy upgrade` --------------------------------------------------------------------

def upgrade(socket_path: str, overrides: dict[str, Any], timeout: float = 30.0
            ) -> tuple[int, int]:
    """Replace the daemon on `socket_path` by a new one (same run options but `overrides`);
    answers (old pid, new pid) once the new one answers. ProxyError if it does not."""
    from proxy.client import ProxyClient
    client = ProxyClient(socket_path, timeout=10)
    old = client.ping()  # ProxyNotRunning: nothing to upgrade
    options = {**old.get("options", {}), **overrides}
    if options.get("listeners") == "systemd":
        raise ProxyError("this proxy runs under systemd: `systemctl restart` it instead")
    if options.get("listeners") == "direct":
        print("gantry-proxy: warning: with direct listeners, connections are refused until the "
              "new daemon listens", file=sys.stderr)
    options["logFile"] = options.get("logFile") or log_path_for(options["state"])
    command = [sys.executable, "-m", "proxy", "run", "--socket", socket_path, "--takeover",
               *run_argv(options)]
    process = start_detached(command, options["logFile"])

    def new_answers() -> dict[str, Any] | None:
        try:
            answer = client.ping()
        except ProxyError:  # the window between the two control listeners
            return None
        return answer if answer["pid"] == process.pid else None
    try:
        new = wait_answering(process, new_answers, timeout)
    except (Exited, TimeoutError) as e:
        raise ProxyError(f"the new gantry-proxy (pid {process.pid}) did not take over: {e}; "
                         f"see {options['logFile']}") from None
    return old["pid"], new["pid"]
