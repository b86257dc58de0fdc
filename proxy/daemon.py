"""Daemon startup: logging, the state lock, the reactor, the listeners, and signals."""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import logging
import os
import sys
import time
from typing import IO, Any

from proxy.address import Address
from proxy.detach import EX_ALREADY_RUNNING
from proxy.state import StateError

log = logging.getLogger("proxy.daemon")

# How long a takeover waits for the old daemon to let go of the state lock.
HANDOVER_LOCK_WAIT = 30.0


def setup_logging(log_file: str | None, verbose: bool = False) -> None:
    """Send stdlib logging to `log_file` (or stderr) and Twisted's logger into stdlib."""
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Twisted reports listener start/stop at INFO; route changes are logged by us already.
    logging.getLogger("twisted").setLevel(logging.DEBUG if verbose else logging.WARNING)
    from twisted.logger import STDLibLogObserver, globalLogBeginner
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)


def acquire_lock(state_path: str, wait: float = 0.0) -> IO[Any] | None:
    """Hold an exclusive lock beside the state file for the daemon's life (one daemon per
    state file); None if another process holds it (for `wait` seconds: a handover)."""
    lock_path = state_path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), mode=0o700, exist_ok=True)
    f = open(lock_path, "a")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.01)


def import_on_first_use(name: str) -> None:
    """Register module `name` so that importing it is free and it runs only when one of its
    attributes is first used (importlib.util.LazyLoader)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        # `from http import cookiejar` looks for the attribute first; without it, the import
        # system would touch the module (and so load it) to check it is initialised.
        setattr(importlib.import_module(parent), child, module)


def spare_unused_imports() -> None:
    """Keep Twisted from loading what the proxy never uses; call before Twisted is imported."""
    # Twisted's reactor imports its TLS support (pyOpenSSL, cryptography: 12 MB of resident
    # memory) whenever pyOpenSSL is installed; the proxy forwards plain TCP and never uses
    # it. A None entry makes that import fail, which Twisted handles as "no TLS here".
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
    # twisted.python.compat imports http.cookiejar, which imports urllib.request, hashlib,
    # ssl and email (about 2.5 MB resident) for a name the proxy never uses.
    import_on_first_use("http.cookiejar")


def install_reactor() -> Any:
    """Our epoll reactor, installed before anything imports the default one."""
    spare_unused_imports()
    from proxy import reactor as proxy_reactor
    try:
        proxy_reactor.install()
    except Exception:  # noqa: BLE001 - a reactor is already installed: use that one
        pass
    from twisted.internet import reactor
    return reactor


def run(socket_path: str, state_path: str, metrics: Address | None = None,
        log_file: str | None = None, shutdown_timeout: float = 10.0,
        verbose: bool = False, listeners: str = "auto", takeover: bool = False) -> int:
    """Run the proxy until SIGTERM/SIGINT (or a handover to a new daemon); returns the exit
    status. `listeners`: see proxy.listeners; `takeover`: see proxy.upgrade."""
    spare_unused_imports()
    setup_logging(log_file, verbose)
    # Everything is imported before a takeover: the old daemon has stopped accepting then.
    reactor = install_reactor()
    from twisted.internet import defer

    from proxy.control import listen_control
    from proxy.listeners import open_listeners
    from proxy.router import Router
    if metrics is not None:  # prometheus_client: a few MB that a proxy without --metrics spares
        from proxy.metrics import listen_metrics
    from proxy.upgrade import Handover, request_handover, run_options

    if takeover:
        request_handover(socket_path)
    lock = acquire_lock(state_path, wait=HANDOVER_LOCK_WAIT if takeover else 0.0)
    if lock is None:
        log.error("another gantry-proxy holds %s.lock; exiting", state_path)
        return EX_ALREADY_RUNNING
    source, control_socket = open_listeners(listeners, reactor, socket_path, log_file)
    router = Router(reactor, state_path, source)
    try:
        router.restore()
    except StateError as e:
        log.error("%s", e)
        return 1
    options = run_options(state_path, metrics, log_file, shutdown_timeout, verbose, source.mode)
    handover = Handover(reactor, router, lock, socket_path, options)
    handover.ports.append(listen_control(reactor, router, socket_path, options, handover,
                                         control_socket))
    if metrics is not None:
        handover.ports.append(listen_metrics(reactor, router, metrics.host, metrics.port))
        log.info("metrics on http://%s/metrics", metrics)
    source.ready()
    # Twisted's SIGTERM/SIGINT handlers stop the reactor; this trigger runs first and holds
    # the shutdown until connections have drained (or the timeout closes them).
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(router.shutdown(shutdown_timeout)))
    log.info("gantry-proxy %d listening on %s (state %s, %d routes, %s listeners)",
             os.getpid(), socket_path, state_path, len(router.routes), source.mode)
    reactor.run()
    log.info("gantry-proxy stopped")
    lock.close()
    return 0
