"""The one module that talks to etcd.

Everything else in gantryd uses the small vocabulary defined here (KeyValue, Compare, Put,
Delete, Lease, Watch), so a change of transport touches this file and gantryd/etcd_gateway.py
only. Requests go through etcd's JSON gateway (see etcd_gateway for why not gRPC).

Failover across several endpoints, lease keepalive and a watch that reconnects (resuming from
the last seen revision) are done here. Secrets (password, key files' content) are never logged
nor put in reprs.

With `user`/`password`, the client authenticates itself and sends the token with every
request (as etcdctl does), over TLS or not; an expired token (etcd's `--auth-token-ttl`) is
renewed and the call retried, so a long-running daemon keeps working.
"""
from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from gantryd import etcd_gateway as G
from gantryd.etcd_gateway import b64, number, unb64

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379


class EtcdError(Exception):
    """An etcd request failed for a reason other than reachability."""


class EtcdUnavailable(EtcdError):
    """No configured endpoint answered."""


class EtcdHandshakeFailed(EtcdUnavailable):
    """Every endpoint failed the TLS handshake (a certificate problem, not an outage)."""


class LeaseLost(EtcdError):
    """etcd no longer knows the lease a request used (it expired during an outage)."""


class PermissionDenied(EtcdError):
    """The etcd user's roles do not allow this request (or auth is on and no user was given)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
        """Parse `host[:port]`, tolerating an `http://` scheme as etcdctl users write it."""
        text = text.strip()
        for scheme in ("http://", "https://"):
            if text.startswith(scheme):
                text = text[len(scheme):]
        host, sep, port = text.rstrip("/").rpartition(":")
        if not sep:
            return cls(text, DEFAULT_PORT)
        if not port.isdigit() or not host:
            raise ValueError(f"bad etcd endpoint {text!r}: expected HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoints(text: str) -> list[Endpoint]:
    """Parse a comma-separated endpoint list."""
    endpoints = [Endpoint.parse(part) for part in text.split(",") if part.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    return endpoints


@dataclass(frozen=True)
class Credentials:
    """TLS files (PEM paths) and user/password."""

    ca_cert: str | None = None
    cert_key: str | None = None
    cert_cert: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """A transaction guard: `target` of `key` `op` `value`."""

    key: str
    target: str  # "mod" | "create" | "version" | "value"
    op: str  # "==" | "!=" | "<" | ">"
    value: int | bytes


def mod_revision_is(key: str, revision: int) -> Compare:
    """Guard: the key was not written since `revision` (0: the key does not exist)."""
    return Compare(key, "mod", "==", revision)


def absent(key: str) -> Compare:
    return Compare(key, "create", "==", 0)


def created_at(key: str, revision: int) -> Compare:
    return Compare(key, "create", "==", revision)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    """Delete `key`; with `prefix` every key under it; with `end` the range [key, end)."""

    key: str
    prefix: bool = False
    end: str | None = None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    deleted: int = 0  # keys deleted by the branch taken


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" | "delete"
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Range:
    """What one watch covers: `key` alone, every key under it (`prefix`), or the keys from
    `key` up to `end` (excluded); without `puts` or `deletes`, etcd leaves those out (it
    never sends them)."""

    key: str
    prefix: bool = False
    end: str | None = None
    puts: bool = True
    deletes: bool = True

    def create_request(self) -> dict:
        """The watch's create request (the gateway's JSON)."""
        key = self.key.encode()
        create: dict = {"key": b64(key), "progress_notify": True}
        if self.prefix:
            create["range_end"] = b64(_range_end(key))
        elif self.end is not None:
            create["range_end"] = b64(self.end)
        filters = [name for name, wanted in (("NOPUT", self.puts), ("NODELETE", self.deletes))
                   if not wanted]
        if filters:
            create["filters"] = filters
        return create


@dataclass(frozen=True)
class WatchBatch:
    """What a watch callback receives.

    `resync` is set when events may have been lost (history compacted): re-read everything.
    """

    events: tuple[WatchEvent, ...]
    revision: int
    resync: bool = False


_GRPC_CODES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
               5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
               8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
               11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
               15: "DATA_LOSS", 16: "UNAUTHENTICATED"}

# etcd's answers to a token it no longer accepts: authenticating again fixes them.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")


def _stale_token(exc: G.Refused) -> bool:
    return any(text in exc.message for text in _STALE_TOKEN)


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # whole keyspace


def _compare_message(c: Compare) -> dict:
    msg: dict = {"key": b64(c.key), "target": c.target.upper(), "result": _COMPARE_OPS[c.op]}
    if c.target == "value":
        msg["value"] = b64(c.value if isinstance(c.value, bytes) else str(c.value))
    else:
        msg[_COMPARE_FIELDS[c.target]] = str(int(c.value))
    return msg


_COMPARE_FIELDS = {"mod": "mod_revision", "create": "create_revision", "version": "version"}
_COMPARE_OPS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def _op_message(op: Put | Delete) -> dict:
    if isinstance(op, Put):
        put = {"key": b64(op.key), "value": b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    key = op.key.encode()
    request = {"key": b64(key)}
    if op.prefix:
        request["range_end"] = b64(_range_end(key))
    elif op.end is not None:
        request["range_end"] = b64(op.end)
    return {"request_delete_range": request}


def _kv(kv: dict) -> KeyValue:
    return KeyValue(unb64(kv.get("key")).decode(), unb64(kv.get("value")),
                    number(kv, "create_revision"), number(kv, "mod_revision"),
                    number(kv, "version"), number(kv, "lease"))


def _revision(answer: dict) -> int:
    return number(answer.get("header") or {}, "revision")


def _prefix_range(prefix: str) -> dict:
    return {"key": b64(prefix), "range_end": b64(_range_end(prefix.encode())),
            "sort_order": "ASCEND", "sort_target": "KEY"}


class Etcd:
    """A connection to an etcd cluster with failover across `endpoints`.

    Every request goes to the current endpoint; when it cannot be reached the next one is
    tried, and EtcdUnavailable is raised once all were tried. Requests may thus be retried:
    callers guard writes with revisions (Compare), which makes a retry harmless.

    `revision_key`: the key read to learn the store revision; a user whose role covers only
    a prefix needs one under it.
    """

    def __init__(self, endpoints: Sequence[Endpoint | str], credentials: Credentials | None = None,
                 timeout: float = 3.0, revision_key: str = "\0"):
        self.endpoints = [e if isinstance(e, Endpoint) else Endpoint.parse(e) for e in endpoints]
        if not self.endpoints:
            raise ValueError("no etcd endpoint given")
        self.credentials = credentials or Credentials()
        self.timeout = timeout
        self.revision_key = revision_key
        self._lock = threading.Lock()
        self._index = 0
        self._client: G.Connection | None = None
        self._context: ssl.SSLContext | None = None
        self._grpc = False  # see use_grpc
        self._closed = False
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Etcd({', '.join(map(str, self.endpoints))})"

    # -- connection management -------------------------------------------------------------
    def _connect(self, endpoint: Endpoint) -> G.Connection:
        c = self.credentials
        if self._grpc:
            from gantryd import etcd_grpc
            client: G.Connection = etcd_grpc.Connection(
                endpoint.host, endpoint.port, c.ca_cert, c.cert_cert, c.cert_key, self.timeout)
        else:
            if self.tls and self._context is None:
                self._context = G.tls_context(c.ca_cert, c.cert_cert, c.cert_key)
            client = G.Connection(endpoint.host, endpoint.port, self._context, self.timeout)
        if c.user:
            try:
                self._authenticate(client)
            except BaseException:
                client.close()
                raise
        return client

    def _authenticate(self, client: G.Connection) -> None:
        """Get a token for our user; every later request on `client` carries it."""
        c = self.credentials
        try:
            answer = client.call("/v3/auth/authenticate",
                                 {"name": c.user, "password": c.password}, token=False)
        except G.Refused as exc:
            raise EtcdError(f"etcd: authentication of user {c.user!r} failed: "
                            f"{exc.details}") from None
        client.token = answer.get("token")

    def renew_token(self, client: G.Connection, stale: str | None) -> None:
        """Authenticate `client` again after etcd refused its token `stale` (expired); once,
        however many threads saw it fail."""
        with self._auth_lock:
            if client.token == stale:
                log.info("etcd: auth token expired; authenticating again")
                self._authenticate(client)

    @property
    def tls(self) -> bool:
        return self.credentials.ca_cert is not None

    def current(self) -> tuple[G.Connection, Endpoint]:
        """The client of the current endpoint (connecting lazily)."""
        with self._lock:
            if self._closed:
                raise EtcdError("etcd connection closed")
            endpoint = self.endpoints[self._index]
            if self._client is None:
                self._client = self._connect(endpoint)
            return self._client, endpoint

    def failed(self, client: G.Connection | None) -> None:
        """Report `client` as not answering (None: connecting failed): move on to the next
        endpoint."""
        with self._lock:
            if client is not self._client:
                return  # someone already moved on
            self._client = None
            self._index = (self._index + 1) % len(self.endpoints)
            log.debug("etcd: switching to %s", self.endpoints[self._index])
        if client is not None:
            client.close()

    def use_grpc(self, client: G.Connection | None, why: G.GatewayUnusable) -> None:
        """The JSON gateway cannot serve us (`why`): talk gRPC from now on (etcd_grpc)."""
        with self._lock:
            if not self._grpc:
                log.info("etcd: %s: using gRPC", why)
            self._grpc = True
            if client is not None and client is self._client:
                self._client = None
        if client is not None:
            client.close()

    def _call(self, fn: Callable[[G.Connection], object]):
        failures: list[tuple[Endpoint, G.Unreachable]] = []
        renewed = False
        stale = None  # (client, token) whose token etcd refused: renew, then retry
        while len(failures) < len(self.endpoints):
            client = None
            endpoint = self.endpoints[self._index]
            try:
                client, endpoint = self.current()
                if stale is not None and stale[0] is client:
                    self.renew_token(*stale)
                token = client.token
                return fn(client)
            except G.Unreachable as exc:
                failures.append((endpoint, exc))
                self.failed(client)
            except G.GatewayUnusable as why:
                self.use_grpc(client, why)
            except G.Refused as exc:
                if self.credentials.user and _stale_token(exc) and not renewed:
                    renewed = True  # once: a token refused again is a real refusal
                    stale = (client, token)
                    continue
                raise self._error(exc) from None
        endpoint, last = failures[-1]
        if all(f.handshake for _, f in failures):
            raise EtcdHandshakeFailed(f"cannot connect to etcd at {endpoint}: {last.reason}")
        raise EtcdUnavailable(f"no etcd endpoint answered (last: {endpoint}: {last.reason})")

    def _error(self, exc: G.Refused) -> EtcdError:
        """A refused request as a one-line EtcdError of the right kind."""
        details = exc.details
        if "lease not found" in details:
            return LeaseLost(f"etcd: {details}")
        if exc.code == G.PERMISSION_DENIED:
            who = f"user {self.credentials.user!r}" if self.credentials.user else (
                "the user named by the client certificate's CN" if self.credentials.cert_cert
                else "no user")
            return PermissionDenied(f"etcd: permission denied for {who}")
        if "user name is empty" in details:  # auth is on, and we gave no user
            return EtcdError("etcd: authentication is enabled: give --user (with "
                             "--password-file or a password in the environment) or a "
                             "client certificate (--cert/--key)")
        return EtcdError(f"etcd: {_GRPC_CODES.get(exc.code, exc.code)}: {details}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _request(self, path: str, body: dict) -> dict:
        return self._call(lambda client: client.call(path, body))

    # -- key/value -------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        kvs = self._request("/v3/kv/range", {"key": b64(key)}).get("kvs")
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` (sorted by key) and the store revision of the read."""
        answer = self._request("/v3/kv/range", _prefix_range(prefix))
        return [_kv(kv) for kv in answer.get("kvs", ())], _revision(answer)

    def get_keys(self, prefix: str) -> list[str]:
        """The keys under `prefix` (no values), sorted."""
        answer = self._request("/v3/kv/range", {**_prefix_range(prefix), "keys_only": True})
        return [unb64(kv.get("key")).decode() for kv in answer.get("kvs", ())]

    def revision(self) -> int:
        """The current store revision."""
        return _revision(self._request("/v3/kv/range",
                                       {"key": b64(self.revision_key), "count_only": True}))

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Unconditional write; for keys only this process writes. Answers the revision."""
        return _revision(self._request("/v3/kv/put", _op_message(Put(key, value, lease))
                                       ["request_put"]))

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete a key (or every key under a prefix); answers how many were deleted."""
        return self.txn([], [Delete(key, prefix=prefix)]).deleted

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        answer = self._request("/v3/kv/txn", {
            "compare": [_compare_message(c) for c in compare],
            "success": [_op_message(o) for o in success],
            "failure": [_op_message(o) for o in failure]})
        deleted = sum(number(r["response_delete_range"], "deleted")
                      for r in answer.get("responses", ()) if "response_delete_range" in r)
        return TxnResult(bool(answer.get("succeeded")), _revision(answer), deleted)

    # -- leases ----------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return number(self._request("/v3/lease/grant", {"TTL": ttl}), "ID")

    def refresh(self, lease_id: int) -> int:
        """Keep a lease alive; answers its remaining TTL (<= 0: the lease is gone)."""
        return number(self._request("/v3/lease/keepalive", {"ID": str(lease_id)}), "TTL")

    def revoke(self, lease_id: int) -> None:
        try:  # (etcd 3.4's gateway has the kv/ path only; 3.5 has both)
            self._request("/v3/kv/lease/revoke", {"ID": str(lease_id)})
        except LeaseLost:
            pass  # already expired: fine

    def lease(self, ttl: int) -> "Lease":
        """Grant a lease and keep it alive in a background thread until revoked."""
        return Lease(self, ttl)

    # -- watches ---------------------------------------------------------------------------
    def watch_prefix(self, prefix: str, callback: Callable[[WatchBatch], None],
                     start_revision: int | None = None,
                     on_state: Callable[[bool], None] | None = None) -> "Watch":
        """Call `callback` with every change under `prefix` after `start_revision`."""
        return Watch(self, Range(prefix, prefix=True), callback, start_revision, on_state)

    def watch(self, ranges: Sequence[Range], callback: Callable[[WatchBatch], None],
              on_state: Callable[[bool], None] | None = None) -> "Watches":
        """Call `callback` with every change of `ranges` from now on, from a thread per
        range."""
        return Watches(self, ranges, callback, on_state)


class Lease:
    """A lease kept alive by a background thread; `lost` is set once etcd dropped it."""

    def __init__(self, etcd: Etcd, ttl: int):
        self.etcd = etcd
        self.ttl = ttl
        self.id = etcd.grant(ttl)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keepalive, name=f"lease-{self.id:x}",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Lease({self.id:x}, ttl={self.ttl})"

    def _keepalive(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                if self.etcd.refresh(self.id) <= 0:
                    log.warning("etcd lease %x expired", self.id)
                    self.lost.set()
                    return
                interval = max(self.ttl / 3.0, 0.2)
            except LeaseLost:
                log.warning("etcd lease %x expired", self.id)
                self.lost.set()
                return
            except Exception as exc:  # the keepalive must outlive any one failure
                # Unreachable for now: retry sooner; the lease may still be alive.
                log.debug("etcd lease %x keepalive: %s", self.id, exc)
                interval = min(0.5, self.ttl / 3.0)

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self._stop.is_set()

    def revoke(self) -> None:
        """Stop the keepalive and drop the lease (its keys vanish now)."""
        self._stop.set()
        if not self.lost.is_set():
            try:
                self.etcd.revoke(self.id)
            except EtcdError as exc:
                log.info("could not revoke lease %x (%s); it expires by itself", self.id, exc)

    def abandon(self) -> None:
        """Stop the keepalive without revoking: the lease expires after its TTL."""
        self._stop.set()


# "hasleader": a member cut off from the cluster ends the stream instead of hanging.
_WATCH_HEADERS = {"Grpc-Metadata-hasleader": "true"}


class Watch:
    """A watch of one range in its own thread that reconnects with backoff and resumes.

    After a reconnect the stream resumes from the revision after the last one seen, so no
    event is lost unless etcd compacted it meanwhile; then the callback gets `resync`.
    `on_state(True/False)` is called when the stream comes up or goes down.
    """

    def __init__(self, etcd: Etcd, watched: Range, callback: Callable[[WatchBatch], None],
                 start_revision: int | None, on_state: Callable[[bool], None] | None):
        self.etcd = etcd
        self.range = watched
        self.callback = callback
        self.on_state = on_state or (lambda up: None)
        self.next_revision = start_revision
        self._cancelled = threading.Event()
        self._stream: G.Stream | None = None
        self._stream_lock = threading.Lock()
        self._up = False  # the stream is created and being read
        self.started = threading.Event()  # etcd created the watch: nothing after is missed
        self._thread = threading.Thread(target=self._run, name=f"watch-{watched.key}",
                                        daemon=True)
        self._thread.start()

    def _open(self, client: G.Connection) -> G.Stream | None:
        create = self.range.create_request()
        if self.next_revision:
            create["start_revision"] = str(self.next_revision)
        stream = client.stream("/v3/watch", {"create_request": create}, _WATCH_HEADERS)
        with self._stream_lock:
            if self._cancelled.is_set():
                stream.close()
                return None
            self._stream = stream
        return stream

    def _run(self) -> None:
        delay = 0.1
        while not self._cancelled.is_set():
            client = None
            try:
                client, _ = self.etcd.current()
                token = client.token
                stream = self._open(client)
                if stream is None:
                    return
                self._read(stream, client, token)
            except G.Unreachable as exc:
                if self._cancelled.is_set():
                    return
                log.debug("etcd watch on %s broke: %s", self.range.key, exc)
                self.etcd.failed(client)
            except G.GatewayUnusable as why:
                self.etcd.use_grpc(client, why)
                continue
            except EtcdError as exc:  # connecting failed
                log.debug("etcd watch on %s: %s", self.range.key, exc)
            except Exception:  # a bug in the callback must not kill the watch silently
                if self._cancelled.is_set():
                    return  # (whatever the cancelled stream raised on its way out)
                log.exception("etcd watch callback failed")
            finally:
                with self._stream_lock:
                    stream, self._stream = self._stream, None
                if stream is not None:
                    stream.close()
            if self._up:
                self._up = False
                delay = 0.1
                self.on_state(False)
            if self._cancelled.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _read(self, stream: G.Stream, client: G.Connection, token: str | None) -> None:
        """Pass the stream's events on until it ends."""
        for response in stream:
            if self._cancelled.is_set():
                return
            revision = _revision(response)
            if number(response, "compact_revision"):  # (etcd cancels such a watch too)
                log.warning("etcd watch on %s: history compacted, resyncing",
                            self.range.key)
                self.next_revision = None
                self.callback(WatchBatch((), revision, resync=True))
                return
            if response.get("canceled"):  # refused at creation (then also `created`)
                self._canceled(client, token, response.get("cancel_reason", ""))
                return
            if response.get("created"):
                if self.next_revision is None:
                    self.next_revision = revision + 1
                self.started.set()
                if not self._up:
                    self._up = True
                    self.on_state(True)
                continue
            events = tuple(WatchEvent(
                "delete" if ev.get("type") == "DELETE" else "put",
                unb64(kv.get("key")).decode(), unb64(kv.get("value")), number(kv, "mod_revision"))
                for ev in response.get("events", ()) for kv in (ev.get("kv") or {},))
            if events:
                self.next_revision = events[-1].mod_revision + 1
                self.callback(WatchBatch(events, revision))
            elif revision >= (self.next_revision or 0):
                self.next_revision = revision + 1  # progress notify
        if not self._cancelled.is_set():  # the member ended the stream: it is going away
            log.debug("etcd watch on %s ended", self.range.key)
            self.etcd.failed(client)

    def _canceled(self, client: G.Connection, token: str | None, reason: str) -> None:
        """etcd ended the watch: an expired token (`invalid auth token`) gets a new one;
        anything else (this member lost its leader, no rights) another member (or the same
        one, connected anew)."""
        log.debug("etcd watch on %s canceled: %s", self.range.key, reason)
        if self.etcd.credentials.user and any(t in reason for t in _STALE_TOKEN):
            self.etcd.renew_token(client, token)
        else:
            self.etcd.failed(client)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.interrupt()  # the watch thread closes it
        self._thread.join(timeout=5)


class Watches:
    """Watches of several ranges, each on a stream of its own, as one: `on_state(True)` once
    all are up, `on_state(False)` when one of them goes down.

    One stream each because etcd's JSON gateway creates one watch per stream: a second
    create request in the same request body is read by the gateway only if it gets to it
    before its first answer goes out (then Go's HTTP server discards the rest of the body),
    so under load some watches would silently not exist. Changes of different ranges come
    in different threads, in no order between them.
    """

    def __init__(self, etcd: Etcd, ranges: Sequence[Range],
                 callback: Callable[[WatchBatch], None],
                 on_state: Callable[[bool], None] | None = None):
        self.on_state = on_state or (lambda up: None)
        self._lock = threading.Lock()
        self._count = len(ranges)
        self._up: set[int] = set()
        self._all_up = False
        self.started = threading.Event()  # every range's watch was created
        self.watches = [Watch(etcd, r, callback, None, lambda up, i=i: self._state(i, up))
                        for i, r in enumerate(ranges)]

    def _state(self, index: int, up: bool) -> None:
        with self._lock:
            (self._up.add if up else self._up.discard)(index)
            now = len(self._up) == self._count
            changed, self._all_up = now != self._all_up, now
        if now:
            self.started.set()
        if changed:
            self.on_state(now)

    def cancel(self) -> None:
        for watch in self.watches:
            watch.cancel()
