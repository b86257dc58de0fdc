"""Deliveries seen before: the ids of registry events and webhook deliveries already handled,
kept in etcd so that any number of `gantryd serve` instances (which keep no state) agree.

    <prefix>/hooks/seen/<source>/<sha256 of the id, 32 hex>   {"id", "state", "at"}

A delivery is first *claimed* (`pending`, created only if absent, on a short lease: a serve
killed while handling it leaves a claim that expires by itself), then *settled* (`done`, on
a lease of SEEN_TTL) once handled, or *released* (deleted) when handling failed, so that a
redelivery is handled again.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from .. import etcd as E
from ..keys import normalize_prefix
from ..store import now_iso

log = logging.getLogger("gantryd.serve")

PENDING_TTL = 60  # seconds a claim outlives a serve killed while handling the delivery
SEEN_TTL = 7 * 24 * 3600  # seconds a handled id is remembered (covers manual redeliveries)
NEW, SEEN, BUSY = "new", "seen", "busy"


def seen_key(prefix: str, source: str, delivery: str) -> str:
    """The key of one delivery id (hashed: ids are the sender's text, of any length)."""
    digest = hashlib.sha256(delivery.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{normalize_prefix(prefix)}/hooks/seen/{source}/{digest}"


@dataclass
class Claim:
    """One delivery being handled by this process."""

    etcd: E.Etcd
    key: str
    delivery: str
    lease: int
    revision: int  # the create revision of the pending key
    failed: bool = False  # set while handling: release rather than settle

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Settle when handled, release when handling raised or `failed` was set."""
        if exc_type is not None or self.failed:
            self.release()
        else:
            self.settle()

    def settle(self) -> None:
        """Handled: remember the id for SEEN_TTL."""
        lease = self.etcd.grant(SEEN_TTL)
        done = self.etcd.txn([E.created_at(self.key, self.revision)],
                             [E.Put(self.key, _value(self.delivery, "done"), lease=lease)])
        if not done.succeeded:  # the pending claim expired meanwhile: nothing to keep
            self.etcd.revoke(lease)
        self.etcd.revoke(self.lease)  # the key now hangs on the long lease (or is gone)

    def release(self) -> None:
        """Not handled: forget the claim so that a redelivery is handled (best effort: an
        unreachable etcd lets the pending lease expire instead)."""
        try:
            self.etcd.revoke(self.lease)
        except E.EtcdError as exc:
            log.warning("could not release the claim of delivery %r (it expires within "
                        "%d s): %s", self.delivery, PENDING_TTL, exc)


def claim(etcd: E.Etcd, prefix: str, source: str, delivery: str) -> Claim | str:
    """A Claim when `delivery` of `source` is new; SEEN when it was handled before, BUSY when
    another request (of this or another serve) is handling it now."""
    key = seen_key(prefix, source, delivery)
    if (state := _state(etcd.get(key))) is not None:
        return state
    lease = etcd.grant(PENDING_TTL)
    result = etcd.txn([E.absent(key)], [E.Put(key, _value(delivery, "pending"), lease=lease)])
    if result.succeeded:
        return Claim(etcd, key, delivery, lease, result.revision)
    etcd.revoke(lease)
    return _state(etcd.get(key)) or BUSY


def _state(kv: E.KeyValue | None) -> str | None:
    if kv is None:
        return None
    try:
        done = json.loads(kv.value).get("state") == "done"
    except (ValueError, AttributeError):
        done = True  # unreadable: treat as handled rather than act twice
    return SEEN if done else BUSY


def _value(delivery: str, state: str) -> bytes:
    return json.dumps({"id": delivery, "state": state, "at": now_iso()}).encode()
