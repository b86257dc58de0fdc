"""One daemon per machine name: the claim a `gantryd run` holds on its lease.

Two daemons with the same `--machine` (cloned VMs often share a hostname) would adopt each
other's containers and write the same status key, so the fleet would count one host where
there are two. A daemon therefore claims `components/<c>/claims/<machine>` before it touches
anything, with who it is: host name, boot id, pid, since. A claim is taken over only when
its holder is surely gone: its key went with its lease, or it was made on this very boot
by a process that no longer runs (a restart after kill -9, within the lease's TTL).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Sequence

from . import etcd as E
from .store import Store, StoreError, now_iso

BOOT_ID = "/proc/sys/kernel/random/boot_id"


class MachineTaken(StoreError):
    """Another live daemon runs under this machine name."""


@dataclass(frozen=True)
class Claimant:
    """Who holds (or wants) a machine name."""

    host: str
    boot: str
    pid: int
    since: str
    started: int | None = None  # the process's start time (clock ticks after boot)

    @classmethod
    def me(cls) -> Claimant:
        return cls(host=socket.gethostname(), boot=boot_id(), pid=os.getpid(), since=now_iso(),
                   started=process_start(os.getpid()))

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Claimant | None:
        try:
            data = json.loads(raw)
            started = data.get("started")
            return cls(host=str(data["host"]), boot=str(data["boot"]), pid=int(data["pid"]),
                       since=str(data.get("since") or ""),
                       started=int(started) if started is not None else None)
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: nobody we could recognise


def boot_id() -> str:
    """This kernel's boot id: the same for every process of this boot, of this machine."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def process_start(pid: int) -> int | None:
    """When process `pid` started (ticks after boot); None when there is no such live
    process (a zombie, reaped or not, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _gone(holder: Claimant | None, me: Claimant) -> bool:
    """Is the holder surely dead? Only a process of this boot can be checked: its pid runs
    no more, or runs another process (same pid, another start time)."""
    if holder is None:
        return True
    if holder.boot != me.boot or holder.boot == "unknown":
        return False
    if holder.pid == me.pid and holder.started == me.started:
        return True  # our own earlier claim (a lease taken again)
    started = process_start(holder.pid)
    return started is None or (holder.started is not None and started != holder.started)


def claim(store: Store, components: Sequence[str], machine: str, lease: int,
          me: Claimant, ttl: int) -> None:
    """Claim `machine` for every component on `lease`; MachineTaken (nothing written) when a
    live daemon holds one of them."""
    for component in components:
        key = store.keys.claim(component, machine)
        for _ in range(5):  # a race with another claimant: read again
            kv = store.etcd.get(key)
            if kv is not None:
                holder = Claimant.from_bytes(kv.value)
                if not _gone(holder, me):
                    raise MachineTaken(_taken(machine, holder, ttl))
                guard = E.mod_revision_is(key, kv.mod_revision)
            else:
                guard = E.absent(key)
            if store.etcd.txn([guard], [E.Put(key, me.to_bytes(), lease)]).succeeded:
                break
        else:
            raise MachineTaken(f"machine name {machine}: the claim keeps changing hands")


def _taken(machine: str, holder: Claimant | None, ttl: int) -> str:
    who = (f"gantryd pid {holder.pid} on host {holder.host} (since {holder.since})"
           if holder else "another gantryd")
    return (f"machine name {machine!r} is already used by {who}. Two daemons must not share "
            f"a name: give this one another --machine, or stop the other one (its claim ends "
            f"with it, at most {ttl} s after it dies)")


def claim_at_start(store: Store, components: Sequence[str], machine: str, ttl: int,
                   me: Claimant) -> E.Lease | None:
    """A lease with `machine` claimed on it, taken before the daemon starts anything (its
    proxy included); None when etcd does not answer now (the daemon's loop claims later).
    MachineTaken when another live daemon holds the name."""
    try:
        lease = store.etcd.lease(ttl)
    except E.EtcdUnavailable:
        return None
    try:
        claim(store, components, machine, lease.id, me, ttl)
    except BaseException as exc:
        lease.revoke()
        if isinstance(exc, E.EtcdUnavailable):
            return None
        raise
    return lease
