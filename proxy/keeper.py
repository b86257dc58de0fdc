"""The listener keeper: a tiny process that holds the proxy's listening sockets so that they
outlive the proxy. While the proxy is down (kill -9, crash, restart, upgrade) the kernel keeps
completing connections into the keeper's listen backlog; the next proxy adopts the same
socket and accepts them. Nothing is refused.

Standard library only, and no proxy code (the keeper must not share the proxy's bugs or its
imports): it binds, holds and hands out sockets, nothing else. One keeper per control socket
(`proxy.paths.keeper_socket_path`); `python -m proxy.keeper --socket PATH` runs one.

Protocol, on a unix stream socket (mode 0600): one JSON request line per connection, one JSON
answer line; `get` attaches the listening socket to the answer (SCM_RIGHTS).
- `{"op": "get", "listen": "host:port", "backlog": n}`: bind and listen if not held yet
  (`{"error": ...}` if the bind fails), answer `{"listen": ...}` + the socket.
- `{"op": "release", "listen": ...}`: close the keeper's copy; `{"released": bool}`.
- `{"op": "list"}`: `{"listeners": [...]}`; `{"op": "ping"}`: `{"pid": n}`;
  `{"op": "stop"}`: `{"stopping": true}`, then close every socket and exit (SIGTERM too).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.address import Address, parse_address
from proxy.detach import EX_ALREADY_RUNNING, Exited, start_detached, wait_answering
from proxy.errors import BadRequest

log = logging.getLogger("proxy.keeper")

# A client that stalls mid-request must not hold the (single-threaded) keeper for long.
REQUEST_TIMEOUT = 5.0
# How often an idle keeper checks that its socket file is still its own.
CHECK_INTERVAL = 5.0
MAX_REQUEST = 4096


class KeeperError(Exception):
    """The keeper could not be reached, or answered an error (e.g. the bind failed)."""


class KeeperUnavailable(KeeperError):
    """The keeper did not answer (not running, or it broke off)."""


class KeeperNotRunning(KeeperUnavailable):
    """Nothing answers on the keeper's socket."""


# -- the client (used by proxy.listeners and the CLI) ---------------------------------------

class KeeperClient:
    """One request per call, on a fresh connection."""

    def __init__(self, path: str, timeout: float = REQUEST_TIMEOUT):
        self.path = path
        self.timeout = timeout

    def _call(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except OSError as e:
                raise KeeperNotRunning(f"no listener keeper answers on {self.path} ({e})") \
                    from None
            data, fds = b"", []
            try:
                s.sendall(json.dumps(request).encode() + b"\n")
                while not data.endswith(b"\n"):
                    chunk, got, _, _ = socket.recv_fds(s, MAX_REQUEST, 4)
                    fds += got
                    if not chunk:
                        raise KeeperUnavailable(f"the keeper on {self.path} closed the "
                                                "connection")
                    data += chunk
                answer = json.loads(data)
                while request["op"] == "stop" and s.recv(1):
                    pass  # it closes the connection once its sockets are closed
            except (OSError, ValueError) as e:
                _close_all(fds)
                raise KeeperUnavailable(f"keeper on {self.path}: {request.get('op')}: {e}") \
                    from None
        if "error" in answer:
            _close_all(fds)
            raise KeeperError(answer["error"])
        return answer, fds

    def get(self, listen: str, backlog: int) -> socket.socket:
        """The keeper's listening socket on `listen` (bound now if it held none): a copy of
        our own, to adopt and close."""
        answer, fds = self._call({"op": "get", "listen": listen, "backlog": backlog})
        if len(fds) != 1:
            _close_all(fds)
            raise KeeperError(f"the keeper answered {answer} without a socket")
        return socket.socket(fileno=fds[0])

    def release(self, listen: str) -> bool:
        """Let go of `listen` for good: once nobody else holds it, new clients are refused
        instead of queued. False if the keeper did not hold it."""
        return bool(self._call({"op": "release", "listen": listen})[0].get("released"))

    def listeners(self) -> list[str]:
        return list(self._call({"op": "list"})[0]["listeners"])

    def ping(self) -> dict[str, Any]:
        return self._call({"op": "ping"})[0]

    def answers(self) -> dict[str, Any] | None:
        try:
            return self.ping()
        except KeeperUnavailable:
            return None

    def stop(self) -> bool:
        """Stop the keeper; once this returns its ports are closed. False if none ran."""
        try:
            self._call({"op": "stop"})
        except KeeperNotRunning:
            return False
        return True


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def ensure_keeper(path: str, log_path: str | None = None, timeout: float = 10.0) -> KeeperClient:
    """A client of the keeper on `path`, started detached (own session: a kill of the proxy
    or its process group leaves it alive) if nothing answers. Racing starters are safe: the
    keeper holds `PATH.lock` and the loser exits EX_ALREADY_RUNNING."""
    client = KeeperClient(path)
    if client.answers() is not None:
        return client
    process = start_detached([sys.executable, "-m", "proxy.keeper", "--socket", path], log_path)

    def settled() -> dict[str, Any] | None:
        # A racing starter's keeper may answer before ours has even tried the lock: wait until
        # ours serves or has exited, or it could take over (and be left running) once the
        # answering one stops.
        answer = client.answers()
        if answer is not None and (answer.get("pid") == process.pid
                                   or process.poll() is not None):
            return answer
        return None
    try:
        wait_answering(process, settled, timeout)
    except Exited as e:
        raise KeeperError(f"the listener keeper for {path} {e}") from None
    except TimeoutError:
        raise KeeperError(f"the listener keeper (pid {process.pid}) did not answer on {path} "
                          f"within {timeout:g}s") from None
    return client


# -- the keeper process ----------------------------------------------------------------------

class _Stop(Exception):
    pass


def bind_listener(address: Address, backlog: int) -> socket.socket:
    """A listening TCP socket as Twisted's listenTCP makes it (SO_REUSEADDR), plus
    TCP_NODELAY: Linux copies it to every accepted socket."""
    sock = socket.socket(socket.AF_INET6 if address.is_ipv6 else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class Keeper:
    """The held sockets, by canonical listen address."""

    def __init__(self) -> None:
        self.held: dict[str, socket.socket] = {}

    def handle(self, request: Any) -> tuple[dict[str, Any], socket.socket | None]:
        """Apply one request: the answer, and the socket to attach (for `get`)."""
        op = request.get("op") if isinstance(request, dict) else None
        if op == "ping":
            return {"pid": os.getpid(), "listeners": len(self.held)}, None
        if op == "list":
            return {"listeners": sorted(self.held)}, None
        if op == "stop":
            return {"stopping": True}, None
        if op not in ("get", "release"):
            return {"error": f"unknown request {request!r}"}, None
        try:
            address = parse_address(request.get("listen"), what="listen", listen=True)
        except BadRequest as e:
            return {"error": str(e)}, None
        key = str(address)
        if op == "release":
            sock = self.held.pop(key, None)
            if sock is not None:
                sock.close()
                log.info("released %s", key)
            return {"released": sock is not None}, None
        backlog = request.get("backlog", 1024)
        if not isinstance(backlog, int) or isinstance(backlog, bool) or backlog < 1:
            return {"error": f"bad backlog {backlog!r}"}, None
        sock = self.held.get(key)
        if sock is None:
            try:
                sock = self.held[key] = bind_listener(address, backlog)
            except OSError as e:
                return {"error": str(e)}, None
            log.info("listening on %s", key)
        else:
            sock.listen(backlog)  # the latest backlog asked for
        return {"listen": key}, sock

    def close(self) -> None:
        for sock in self.held.values():
            sock.close()
        self.held.clear()


def _serve_one(keeper: Keeper, conn: socket.socket) -> bool:
    """Answer one connection's request; False once asked to stop."""
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            return True
        data += chunk
    try:
        request = json.loads(data)
    except ValueError:
        request = None
    answer, sock = keeper.handle(request)
    line = json.dumps(answer).encode() + b"\n"
    if sock is not None:
        socket.send_fds(conn, [line], [sock.fileno()])
    else:
        conn.sendall(line)
    return answer != {"stopping": True}


def _lock(path: str) -> Any:
    f = open(path, "a")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _listen_unix(path: str) -> socket.socket:
    sock_path = Path(path)
    # We hold the lock: a socket file left there is a dead keeper's.
    if sock_path.is_socket() or (sock_path.is_symlink() and not sock_path.exists()):
        sock_path.unlink()
    elif sock_path.exists():
        raise SystemExit(f"gantry-proxy keeper: {path} exists and is not a socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask closes the window between bind() and chmod() in which the socket is open.
    old_umask = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old_umask)
    server.listen(64)
    return server


def serve(path: str) -> int:
    """Run the keeper on `path` until SIGTERM, SIGINT or a `stop` request."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock(path + ".lock")
    if lock is None:
        log.info("another keeper holds %s.lock", path)
        return EX_ALREADY_RUNNING
    server = _listen_unix(path)
    inode = os.stat(path).st_ino
    keeper = Keeper()

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlives the terminal that started it
    log.info("listener keeper %d on %s", os.getpid(), path)

    def close() -> None:
        keeper.close()
        if _path_inode(path) == inode:  # not another keeper's
            with contextlib.suppress(OSError):
                os.unlink(path)

    server.settimeout(CHECK_INTERVAL)
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if _path_inode(path) != inode:
                    # Removed or replaced: no proxy can reach us, and a listener nobody
                    # serves would queue its clients forever.
                    log.warning("%s is gone; stopping", path)
                    break
                continue
            with conn:
                try:
                    if not _serve_one(keeper, conn):
                        close()  # before the connection closes: `stop` waits for that
                        break
                except OSError as e:  # that client's problem, not the keeper's
                    log.warning("request failed: %s", e)
    except _Stop:
        pass
    finally:
        close()
        server.close()
        lock.close()
    log.info("listener keeper %d stopped", os.getpid())
    return 0


def _path_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m proxy.keeper",
                                description="Hold gantry-proxy's listening sockets.")
    p.add_argument("--socket", required=True, help="the keeper's unix socket")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(args.socket)


if __name__ == "__main__":
    sys.exit(main())
