"""One etcd endpoint over gRPC, for where etcd's JSON gateway cannot serve: an etcd with the
gateway turned off, or a client certificate whose CN is the etcd user (auth enabled; the
gateway talks to etcd on its own behalf, so etcd refuses such requests through it rather than
ignore the CN).

Same calls and answers as etcd_gateway.Connection (the gateway's JSON, which is protobuf's JSON
mapping: bytes in base64, 64-bit numbers as strings, proto field names), so the rest of gantryd
does not know which one it uses. gRPC and python-etcd3's messages are imported only here, and
this module only when it is needed.
"""
from __future__ import annotations

import os
import queue

# python-etcd3's generated protobuf code predates protobuf 4: select the pure-python
# implementation before protobuf is first imported (must stay above the etcd3 import).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
# gRPC's C core prints its own lines on stderr; errors reach the user once, as gantryd's.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import etcd3.etcdrpc as rpc  # noqa: E402
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from gantryd.etcd_gateway import (  # noqa: E402
    CERT_REFUSED, WRONG_CA, WRONG_HOST, Refused, Unreachable)

# gateway path -> (stub, method, request message, one request on a stream)
_METHODS = {
    "/v3/kv/range": (rpc.KVStub, "Range", rpc.RangeRequest, False),
    "/v3/kv/put": (rpc.KVStub, "Put", rpc.PutRequest, False),
    "/v3/kv/txn": (rpc.KVStub, "Txn", rpc.TxnRequest, False),
    "/v3/lease/grant": (rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest, False),
    "/v3/lease/keepalive": (rpc.LeaseStub, "LeaseKeepAlive", rpc.LeaseKeepAliveRequest, True),
    "/v3/kv/lease/revoke": (rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest, False),
    "/v3/auth/authenticate": (rpc.AuthStub, "Authenticate", rpc.AuthenticateRequest, False),
}

# gRPC's words for a failed connection -> (what to tell the user, a TLS handshake failure?)
_CONNECT_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", WRONG_CA, True),
    ("not in peer certificate", WRONG_HOST, True),
    ("TSI_DATA_CORRUPTED", CERT_REFUSED, True),
    ("Connection refused", "connection refused", False),
)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)


def _error(exc: grpc.RpcError) -> Exception:
    details = exc.details() or exc.code().name
    if exc.code() not in _RETRYABLE:
        return Refused(exc.code().value[0], details)
    for needle, reason, handshake in _CONNECT_REASONS:
        if needle in details:
            return Unreachable(reason, handshake)
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unreachable("timed out")
    return Unreachable(details.removeprefix("etcdserver: ").rsplit(": ", 1)[-1])


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Connection:
    """etcd_gateway.Connection's calls over a gRPC channel."""

    def __init__(self, host: str, port: int, ca_cert: str | None, cert: str | None,
                 key: str | None, timeout: float):
        if ca_cert is None:
            self._channel = grpc.insecure_channel(f"{host}:{port}")
        else:
            credentials = grpc.ssl_channel_credentials(
                _read(ca_cert), _read(key) if key else None, _read(cert) if cert else None)
            self._channel = grpc.secure_channel(f"{host}:{port}", credentials)
        self.timeout = timeout
        self.token: str | None = None

    def _metadata(self, token: bool = True, extra: dict[str, str] | None = None) -> tuple:
        pairs = [(name.removeprefix("Grpc-Metadata-").lower(), value)
                 for name, value in (extra or {}).items()]
        if token and self.token:
            pairs.append(("token", self.token))
        return tuple(pairs)

    def call(self, path: str, body: dict, timeout: float | None = None,
             token: bool = True) -> dict:
        stub, method, message, streamed = _METHODS[path]
        request = json_format.ParseDict(body, message())
        call = getattr(stub(self._channel), method)
        try:
            if streamed:
                answers = call(iter([request]), timeout or self.timeout,
                               metadata=self._metadata(token))
                return next((_dict(a) for a in answers), {})
            return _dict(call(request, timeout or self.timeout, metadata=self._metadata(token)))
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def stream(self, path: str, body: dict, headers: dict[str, str] | None = None) -> "Stream":
        assert path == "/v3/watch", path
        return Stream(rpc.WatchStub(self._channel), json_format.ParseDict(
            body, rpc.WatchRequest()), self._metadata(extra=headers))

    def close(self) -> None:
        self._channel.close()


class Stream:
    """A watch stream: its answers as the gateway's JSON messages."""

    def __init__(self, stub, request, metadata: tuple):
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(request)

        def requests():
            while (item := self._requests.get()) is not None:
                yield item
        self._call = stub.Watch(requests(), metadata=metadata)

    def __iter__(self):
        try:
            for answer in self._call:
                yield _dict(answer)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        except ValueError as exc:  # the channel was closed under the stream
            raise Unreachable(str(exc)) from None

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()

    interrupt = close  # (cancelling a gRPC call is safe from any thread)
