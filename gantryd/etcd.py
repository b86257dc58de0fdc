"""The one module that talks to etcd.

Everything else in gantryd uses the small vocabulary defined here (KeyValue, Compare, Put,
Delete, Lease, Watch), so a later switch of client library touches this file only.

python-etcd3 0.12 talks to a single endpoint; failover across several endpoints, lease
keepalive and a watch that reconnects (resuming from the last seen revision) are done here.
Secrets (password, key files' content) are never logged nor put in reprs.

With `user`/`password`, the client authenticates itself and sends the token as plain gRPC
metadata on every call (as etcdctl does), over TLS or not; an expired token (etcd's
`--auth-token-ttl`) is renewed and the call retried, so a long-running daemon keeps working.
"""
from __future__ import annotations

import os

# python-etcd3's generated protobuf code predates protobuf 4: select the pure-python
# implementation before protobuf is first imported (must stay above the etcd3 import).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
# gRPC's C core prints its own lines on stderr (a failed TLS handshake: "E1130 ...
# ssl_transport_security_utils.cc ... Corruption detected"); errors reach the user once, as
# gantryd's one-line messages. GRPC_VERBOSITY=ERROR (or DEBUG) in the environment shows them.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import logging  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable, Iterator, Sequence  # noqa: E402

import grpc  # noqa: E402
import etcd3  # noqa: E402
import etcd3.etcdrpc as rpc  # noqa: E402
import etcd3.exceptions as etcd3_exceptions  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
STREAM_WAIT = 5.0  # see Etcd.quiet_streams


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


class _Unreachable(etcd3_exceptions.ConnectionFailedError):
    """Connecting to one endpoint failed; `reason` says why in words."""

    def __init__(self, reason: str, handshake: bool):
        super().__init__(reason)
        self.reason = reason
        self.handshake = handshake


# Errors after which another endpoint may answer.
_RETRYABLE = (
    _Unreachable,
    etcd3_exceptions.ConnectionFailedError,
    etcd3_exceptions.ConnectionTimeoutError,
    etcd3_exceptions.InternalServerError,
)


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
    """TLS files and user/password, passed to python-etcd3 as is."""

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
class WatchBatch:
    """What a watch callback receives.

    `resync` is set when events may have been lost (history compacted): re-read everything.
    """

    events: tuple[WatchEvent, ...]
    revision: int
    resync: bool = False


def _details(exc: grpc.RpcError) -> str:
    """etcd's own words, without its `etcdserver: ` prefix."""
    return (exc.details() or exc.code().name).removeprefix("etcdserver: ")


# gRPC's words for a failed connection -> (what to tell the user, a TLS handshake failure?)
_CONNECT_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED",
     "TLS: the server's certificate is not signed by the CA of --ca-cert", True),
    ("not in peer certificate",
     "TLS: the server's certificate does not name this host", True),
    ("TSI_DATA_CORRUPTED",
     "TLS: the server refused the client certificate (none given, or not signed by a CA it "
     "trusts: check --cert/--key)", True),
    ("CERTIFICATE_REQUIRED",
     "TLS: the server requires a client certificate (--cert/--key)", True),
    ("Failed to create security handshaker",
     "TLS: the certificate files cannot be used (not PEM, or --key is not the key of --cert)",
     True),
    ("Connection refused", "connection refused", False),
)


_HUNG_UP = ("Socket closed", "Handshake read failed", "Connection reset by peer")


def _unreachable(exc: BaseException | None, tls: bool) -> _Unreachable:
    """Why a connection failed, from the gRPC error behind `exc` (python-etcd3 raises its
    own exception while handling gRPC's, which stays in the chain)."""
    while exc is not None and not isinstance(exc, grpc.RpcError):
        exc = exc.__context__
    if exc is None:
        return _Unreachable("etcd connection failed", False)
    details = exc.details() or ""
    for needle, reason, handshake in _CONNECT_REASONS:
        if needle in details:
            return _Unreachable(reason, handshake)
    # The peer hung up during the handshake: gRPC says "Socket closed" or, when the reset
    # comes while it reads the TLS answer, "Handshake read failed (...reset by peer)".
    if tls and any(text in details for text in _HUNG_UP):
        return _Unreachable("TLS handshake failed: does the endpoint serve TLS?", True)
    if "Socket closed" in details:
        return _Unreachable("connection closed at once: does the endpoint require TLS "
                            "(--ca-cert)?", False)
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return _Unreachable("timed out", False)
    return _Unreachable(details.rsplit(": ", 1)[-1] or exc.code().name, False)


def _channel_closed(exc: grpc.RpcError) -> bool:
    """A call cancelled because another thread gave its client up (Etcd.failed closed the
    channel under it): another endpoint may answer."""
    return (exc.code() == grpc.StatusCode.CANCELLED
            and "channel closed" in (exc.details() or "").lower())


# etcd's answers to a token it no longer accepts: authenticating again fixes them.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")


def _stale_token(exc: grpc.RpcError) -> bool:
    return any(text in (exc.details() or "") for text in _STALE_TOKEN)


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # whole keyspace


_COMPARE_TARGETS = {
    "mod": rpc.Compare.MOD,
    "create": rpc.Compare.CREATE,
    "version": rpc.Compare.VERSION,
    "value": rpc.Compare.VALUE,
}
_COMPARE_OPS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


def _compare_message(c: Compare) -> "rpc.Compare":
    msg = rpc.Compare(key=c.key.encode(), target=_COMPARE_TARGETS[c.target],
                      result=_COMPARE_OPS[c.op])
    if c.target == "mod":
        msg.mod_revision = int(c.value)
    elif c.target == "create":
        msg.create_revision = int(c.value)
    elif c.target == "version":
        msg.version = int(c.value)
    else:
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    return msg


def _op_message(op: Put | Delete) -> "rpc.RequestOp":
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(
            key=op.key.encode(), value=op.value, lease=op.lease or 0))
    key = op.key.encode()
    request = rpc.DeleteRangeRequest(key=key)
    if op.prefix:
        request.range_end = _range_end(key)
    elif op.end is not None:
        request.range_end = op.end.encode()
    return rpc.RequestOp(request_delete_range=request)


def _kv(kv) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision,
                    kv.version, kv.lease)


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
        self._client: etcd3.Etcd3Client | None = None
        self._closed = False
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Etcd({', '.join(map(str, self.endpoints))})"

    # -- connection management -------------------------------------------------------------
    def _connect(self, endpoint: Endpoint) -> etcd3.Etcd3Client:
        c = self.credentials
        # User and password are not handed to python-etcd3: it would send the token as gRPC
        # call credentials too, which gRPC refuses on a channel without TLS.
        client = etcd3.client(host=endpoint.host, port=endpoint.port, ca_cert=c.ca_cert,
                              cert_key=c.cert_key, cert_cert=c.cert_cert, timeout=self.timeout)
        if c.user:
            try:
                self._authenticate(client)
            except BaseException:
                client.close()
                raise
        return client

    def _authenticate(self, client: etcd3.Etcd3Client) -> None:
        """Get a token for our user; every later call on `client` carries it."""
        c = self.credentials
        request = rpc.AuthenticateRequest(name=c.user, password=c.password)
        try:
            response = rpc.AuthStub(client.channel).Authenticate(request, self.timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _unreachable(exc, self.tls) from None
            raise EtcdError(f"etcd: authentication of user {c.user!r} failed: "
                            f"{_details(exc)}") from None
        client.metadata = (("token", response.token),)

    def renew_token(self, client: etcd3.Etcd3Client, stale) -> None:
        """Authenticate `client` again after etcd refused its token `stale` (expired); once,
        however many threads saw it fail."""
        with self._auth_lock:
            if client.metadata is stale:
                log.info("etcd: auth token expired; authenticating again")
                self._authenticate(client)

    @property
    def tls(self) -> bool:
        return self.credentials.ca_cert is not None

    def current(self) -> tuple[etcd3.Etcd3Client, Endpoint]:
        """The client of the current endpoint (connecting lazily)."""
        with self._lock:
            if self._closed:
                raise EtcdError("etcd connection closed")
            endpoint = self.endpoints[self._index]
            if self._client is None:
                self._client = self._connect(endpoint)
            return self._client, endpoint

    def failed(self, client: etcd3.Etcd3Client) -> None:
        """Report `client` as not answering: move on to the next endpoint."""
        with self._lock:
            if client is not self._client:
                return  # someone already moved on
            self._client = None
            self._index = (self._index + 1) % len(self.endpoints)
            log.debug("etcd: switching to %s", self.endpoints[self._index])
        try:
            client.close()
        except Exception:  # closing a broken channel must not hide the real problem
            pass

    def _call(self, fn: Callable[[etcd3.Etcd3Client], object]):
        failures: list[tuple[Endpoint, _Unreachable]] = []
        renewed = False
        stale = None  # (client, token) whose token etcd refused: renew, then retry
        while len(failures) < len(self.endpoints):
            client = None
            endpoint = self.endpoints[self._index]
            try:
                client, endpoint = self.current()
                if stale is not None and stale[0] is client:
                    self.renew_token(*stale)
                token = client.metadata
                return fn(client)
            except (*_RETRYABLE, ValueError) as exc:
                # ValueError: grpc's "Channel closed", when another thread gave up this
                # client (failed()) while our call was starting on it: try the next one.
                if isinstance(exc, ValueError) and "closed" not in str(exc).lower():
                    raise
                failures.append((endpoint, exc if isinstance(exc, _Unreachable)
                                 else _unreachable(exc, self.tls)))
                if client is not None:
                    self.failed(client)
                else:
                    with self._lock:
                        self._index = (self._index + 1) % len(self.endpoints)
            except grpc.RpcError as exc:
                if _channel_closed(exc):  # as the ValueError above, but mid-call
                    failures.append((endpoint, _unreachable(exc, self.tls)))
                    self.failed(client)
                    continue
                if self.credentials.user and _stale_token(exc) and not renewed:
                    renewed = True  # once: a token refused again is a real refusal
                    stale = (client, token)
                    continue
                raise self._error(exc) from None
            except etcd3_exceptions.Etcd3Exception as exc:
                raise EtcdError(f"etcd: {type(exc).__name__}: {exc}") from None
        endpoint, last = failures[-1]
        if all(f.handshake for _, f in failures):
            raise EtcdHandshakeFailed(f"cannot connect to etcd at {endpoint}: {last.reason}")
        raise EtcdUnavailable(f"no etcd endpoint answered (last: {endpoint}: {last.reason})")

    def _error(self, exc: grpc.RpcError) -> EtcdError:
        """A refused request as a one-line EtcdError of the right kind."""
        details = _details(exc)
        if "lease not found" in details:
            return LeaseLost(f"etcd: {details}")
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            who = f"user {self.credentials.user!r}" if self.credentials.user else (
                "the user named by the client certificate's CN" if self.credentials.cert_cert
                else "no user")
            return PermissionDenied(f"etcd: permission denied for {who}")
        if "user name is empty" in details:  # auth is on, and we gave no user
            return EtcdError("etcd: authentication is enabled: give --user (with "
                             "--password-file or a password in the environment) or a "
                             "client certificate (--cert/--key)")
        return EtcdError(f"etcd: {exc.code().name}: {details}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- key/value -------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        def get(client):
            response = client.get_response(key)
            return _kv(response.kvs[0]) if response.kvs else None
        return self._call(get)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` (sorted by key) and the store revision of the read."""
        def get(client):
            response = client.get_prefix_response(prefix, sort_order="ascend")
            return [_kv(kv) for kv in response.kvs], response.header.revision
        return self._call(get)

    def get_keys(self, prefix: str) -> list[str]:
        """The keys under `prefix` (no values), sorted."""
        def get(client):
            response = client.get_prefix_response(prefix, sort_order="ascend", keys_only=True)
            return [kv.key.decode() for kv in response.kvs]
        return self._call(get)

    def revision(self) -> int:
        """The current store revision."""
        return self._call(
            lambda client: client.get_response(self.revision_key).header.revision)

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Unconditional write; for keys only this process writes. Answers the revision."""
        return self._call(lambda client: client.put(key, value, lease=lease).header.revision)

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete a key (or every key under a prefix); answers how many were deleted."""
        return self.txn([], [Delete(key, prefix=prefix)]).deleted

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        request = rpc.TxnRequest(compare=[_compare_message(c) for c in compare],
                                 success=[_op_message(o) for o in success],
                                 failure=[_op_message(o) for o in failure])

        def txn(client):
            response = client.kvstub.Txn(request, self.timeout,
                                         credentials=client.call_credentials,
                                         metadata=client.metadata)
            deleted = sum(r.response_delete_range.deleted for r in response.responses
                          if r.WhichOneof("response") == "response_delete_range")
            return TxnResult(response.succeeded, response.header.revision, deleted)
        return self._call(_translated(txn))

    # -- leases ----------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return self._call(lambda client: client.lease(ttl).id)

    def refresh(self, lease_id: int) -> int:
        """Keep a lease alive; answers its remaining TTL (<= 0: the lease is gone)."""
        def refresh(client):
            responses = list(client.refresh_lease(lease_id))
            return responses[-1].TTL if responses else 0
        return self._call(refresh)

    def revoke(self, lease_id: int) -> None:
        def revoke(client):
            try:
                client.revoke_lease(lease_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # already expired: fine
                    raise
        self._call(_translated(revoke))

    def lease(self, ttl: int) -> "Lease":
        """Grant a lease and keep it alive in a background thread until revoked."""
        return Lease(self, ttl)

    @staticmethod
    def quiet_streams(seconds: float = STREAM_WAIT) -> None:
        """Let threads blocked on a gRPC stream (watches) sleep until a message comes.

        gRPC wakes such a thread every 0.1 s only so that a *main* thread blocked there could
        run its signal handlers; a long-running daemon reads its streams in threads of their
        own, where those wake-ups are pure cost (ten a second per watch, each taking the
        GIL). Messages and cancellations still wake the thread at once (a condition
        variable): only the idle re-check is stretched. Call it in a daemon, not a CLI.
        """
        from grpc import _common  # gRPC's own knob (module-level, read at every wait)
        if isinstance(getattr(_common, "MAXIMUM_WAIT_TIMEOUT", None), (int, float)):
            _common.MAXIMUM_WAIT_TIMEOUT = seconds

    # -- watches ---------------------------------------------------------------------------
    def watch_prefix(self, prefix: str, callback: Callable[[WatchBatch], None],
                     start_revision: int | None = None,
                     on_state: Callable[[bool], None] | None = None) -> "Watch":
        """Call `callback` with every change under `prefix` after `start_revision`."""
        return Watch(self, prefix, callback, start_revision, on_state)


def _translated(fn):
    """Map raw gRPC errors of direct stub calls like python-etcd3 maps its own."""
    def call(client):
        try:
            return fn(client)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise etcd3_exceptions.ConnectionFailedError() from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise etcd3_exceptions.ConnectionTimeoutError() from None
            raise
    return call


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


class Watch:
    """A prefix watch in its own thread that reconnects with backoff and resumes.

    After a reconnect the stream resumes from the revision after the last one seen, so no
    event is lost unless etcd compacted it meanwhile; then the callback gets `resync`.
    `on_state(True/False)` is called when the stream comes up or goes down.
    """

    def __init__(self, etcd: Etcd, prefix: str, callback: Callable[[WatchBatch], None],
                 start_revision: int | None, on_state: Callable[[bool], None] | None):
        self.etcd = etcd
        self.prefix = prefix.encode()
        self.callback = callback
        self.on_state = on_state or (lambda up: None)
        self.next_revision = start_revision
        self._cancelled = threading.Event()
        self._call = None
        self._requests: queue.Queue | None = None
        self.started = threading.Event()  # etcd created the watch: nothing after is missed
        self._thread = threading.Thread(target=self._run, name=f"watch-{prefix}", daemon=True)
        self._thread.start()

    def _stream(self, client: etcd3.Etcd3Client) -> Iterator:
        create = rpc.WatchCreateRequest(key=self.prefix, range_end=_range_end(self.prefix),
                                        progress_notify=True)
        if self.next_revision:
            create.start_revision = self.next_revision
        requests: queue.Queue = queue.Queue()
        requests.put(rpc.WatchRequest(create_request=create))
        self._requests = requests

        def request_iter():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item
        # "hasleader": a member cut off from the cluster ends the stream instead of hanging.
        metadata = tuple(client.metadata or ()) + (("hasleader", "true"),)
        self._call = rpc.WatchStub(client.channel).Watch(
            request_iter(), credentials=client.call_credentials, metadata=metadata)
        return self._call

    def _run(self) -> None:
        delay = 0.1
        up = False
        while not self._cancelled.is_set():
            client = None
            try:
                client, _ = self.etcd.current()
                token = client.metadata
                for response in self._stream(client):
                    if self._cancelled.is_set():
                        return
                    if response.compact_revision:  # (etcd cancels such a watch too)
                        log.warning("etcd watch on %s: history compacted, resyncing",
                                    self.prefix.decode())
                        self.next_revision = None
                        self.callback(WatchBatch((), response.header.revision, resync=True))
                        break
                    if response.canceled:  # refused at creation (then also `created`)
                        self._canceled(client, token, response.cancel_reason)
                        break
                    if response.created:
                        if self.next_revision is None:
                            self.next_revision = response.header.revision + 1
                        self.started.set()
                        if not up:
                            up = True
                            delay = 0.1
                            self.on_state(True)
                        continue
                    events = tuple(WatchEvent(
                        "delete" if ev.type == ev.DELETE else "put", ev.kv.key.decode(),
                        ev.kv.value, ev.kv.mod_revision) for ev in response.events)
                    if events:
                        self.next_revision = events[-1].mod_revision + 1
                    elif response.header.revision >= (self.next_revision or 0):
                        self.next_revision = response.header.revision + 1  # progress notify
                    if events:
                        self.callback(WatchBatch(events, response.header.revision))
            except grpc.RpcError as exc:
                if self._cancelled.is_set():
                    return
                log.debug("etcd watch on %s broke: %s", self.prefix.decode(), exc.code().name)
                if client is not None:
                    self.etcd.failed(client)
            except (EtcdError, *_RETRYABLE) as exc:  # connecting failed
                log.debug("etcd watch on %s: %s", self.prefix.decode(), exc)
            except Exception:  # a bug in the callback must not kill the watch silently
                log.exception("etcd watch callback failed")
            finally:
                if self._requests is not None:
                    self._requests.put(None)
            if up:
                up = False
                self.on_state(False)
            if self._cancelled.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _canceled(self, client: etcd3.Etcd3Client, token, reason: str) -> None:
        """etcd ended the watch: an expired token (`invalid auth token`) gets a new one;
        anything else (this member lost its leader, no rights) another member (or the same
        one, connected anew)."""
        log.debug("etcd watch on %s canceled: %s", self.prefix.decode(), reason)
        if self.etcd.credentials.user and any(t in reason for t in _STALE_TOKEN):
            self.etcd.renew_token(client, token)
        else:
            self.etcd.failed(client)

    def cancel(self) -> None:
        self._cancelled.set()
        if self._requests is not None:
            self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=5)

