"""Endpoint registration: every `gantryd run` publishes the component ports its proxy serves,
so that an upstream load balancer can follow the fleet (`gantryd endpoints`, rendered by
gantryd/endpoint_render.py).

```
components/<c>/endpoints/<machine>/<port>   {"component", "machine", "address", "port", "kind",
                                             "revision", "image", "healthy", "since"}
```
A key per component per external port, on the host's lease: written when the component is
live on the host (a running, routed container), updated when what it serves changes (a new
revision, health), deleted when the component is being stopped or killed there; the daemon's
shutdown revokes its lease (gone at once), and its death lets the lease expire (gone within
the lease TTL). `address` is what `gantryd run --advertise` names (see `advertise_address`).
"""
from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from . import etcd as E
from .store import MachineStatus, Store, _dump, _field, _load, now_iso

log = logging.getLogger("gantryd.endpoints")

GONE = ("stopping", "stopped", "killed")  # a host with these statuses publishes nothing
UNHEALTHY = ("unhealthy", "restarting")  # published, marked unhealthy
SETTLED = ("ready", "split")  # the host reached the revision it reports
WILDCARDS = ("", "0.0.0.0", "::", "*")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Endpoint:
    """One port of one component served by one host's proxy."""

    component: str
    machine: str
    address: str
    port: int
    kind: str = "tcp"  # the port's kind in the config: tcp | http
    revision: int | None = None  # the desired revision the host reached with `image`
    image: str | None = None
    healthy: bool = True
    since: str = ""  # when this record last changed (revision, image, health)

    @property
    def hostport(self) -> str:
        """`address:port`, `[v6]:port` for an IPv6 address."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "machine": self.machine, "address": self.address,
                "port": self.port, "kind": self.kind, "revision": self.revision,
                "image": self.image, "healthy": self.healthy, "since": self.since}

    @classmethod
    def from_kv(cls, kv: E.KeyValue, component: str) -> Endpoint:
        what = "endpoint"
        data = _load(kv, what)
        opt = (str, type(None))
        return cls(component=component,
                   machine=_field(data, kv.key, "machine", (str,), what),
                   address=_field(data, kv.key, "address", (str,), what),
                   port=_field(data, kv.key, "port", (int,), what),
                   kind=_field(data, kv.key, "kind", (str,), what, required=False,
                               default="tcp"),
                   revision=_field(data, kv.key, "revision", (int, type(None)), what,
                                   required=False),
                   image=_field(data, kv.key, "image", opt, what, required=False),
                   healthy=_field(data, kv.key, "healthy", (bool,), what, required=False,
                                  default=True),
                   since=_field(data, kv.key, "since", (str,), what, required=False,
                                default=""))


def read(store: Store, components: Sequence[str]) -> list[Endpoint]:
    """Every published endpoint of `components`, by component (in the given order), port,
    machine."""
    out = []
    for order, name in enumerate(components):
        kvs, _ = store.etcd.get_prefix(store.keys.endpoints(name))
        out += [(order, Endpoint.from_kv(kv, name)) for kv in kvs]
    out.sort(key=lambda pair: (pair[0], pair[1].port, pair[1].machine))
    return [e for _, e in out]


# -- the address other hosts reach ---------------------------------------------------------------

def check_address(text: str, what: str = "--advertise") -> str:
    """An IP address or host name others can connect to (ValueError naming `what`)."""
    value = text.strip().strip("[]")
    if value in WILDCARDS:
        raise ValueError(f"{what} {text!r}: a wildcard is no address other hosts can "
                         "reach; name this host's address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not _HOSTNAME.match(value):
        raise ValueError(f"{what} {text!r}: expected an IP address or a host name")
    return value


def primary_address() -> str:
    """This host's address on its default route (no packet is sent), else what its name
    resolves to, else 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return s.getsockname()[0]
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def advertise_address(advertise: str | None, proxy_bind: str | None) -> str:
    """`--advertise` if given, else `--proxy-bind` unless it is a wildcard, else this host's
    primary address (ValueError for a bad `--advertise`)."""
    if advertise is not None:
        return check_address(advertise)
    if proxy_bind is not None and proxy_bind.strip("[]") not in WILDCARDS:
        return check_address(proxy_bind, "--proxy-bind")
    return primary_address()


# -- the daemon's side -------------------------------------------------------------------------

class Publisher:
    """Keeps this host's endpoint keys equal to what its proxy serves. Called by the daemon
    each time it writes its status for a component (so only on changes); the etcd writes of
    one call are one transaction."""

    def __init__(self, store: Store, machine: str, address: str | None, lifecycle: Any):
        self.store = store
        self.machine = machine
        self.address = address  # None: publish nothing
        self.lifecycle = lifecycle
        self._lease: int | None = None
        self._published: dict[str, dict[int, Endpoint]] = {}
        self._revisions: dict[str, tuple[tuple[str, str], int | None]] = {}
        if address is not None:
            log.info("%s: endpoints published at %s", machine, address)

    def publish(self, component: str, status: MachineStatus, live: Any, lease: int) -> None:
        """Publish `component`'s ports as `status` (just reported) and `live` (its live
        container, gantryd.rollout.Live or None) say."""
        if self.address is None:
            return
        if lease != self._lease:  # a new lease: the old keys went (or go) with the old one
            self._published.clear()
            self._lease = lease
        old = self._published.get(component, {})
        new: dict[int, Endpoint] = {}
        if live is not None and live.running and status.status not in GONE:
            revision = self._revision(component, status, live)
            for port, kind in self._ports(component).items():
                record = Endpoint(component, self.machine, self.address, port, kind, revision,
                                  live.image, status.status not in UNHEALTHY)
                before = old.get(port)
                new[port] = before if before is not None and replace(before, since="") == \
                    record else replace(record, since=now_iso())
        ops: list[E.Put | E.Delete] = [
            E.Delete(self.store.keys.endpoint(component, self.machine, port))
            for port in old.keys() - new.keys()]
        ops += [E.Put(self.store.keys.endpoint(component, self.machine, port),
                      _dump(e.to_json()), lease)
                for port, e in new.items() if old.get(port) is not e]
        if ops:
            self.store.etcd.txn([], ops)
            log.info("%s: endpoints %s", component,
                     ", ".join(f"{e.hostport}{'' if e.healthy else ' (unhealthy)'}"
                               for e in new.values()) or "withdrawn")
        self._published[component] = new

    def _ports(self, component: str) -> dict[int, str]:
        """External port -> kind of the component's proxy routes on this host."""
        out = {}
        for route in self.lifecycle.routes(component):
            port = route.get("name", "").rpartition(".")[2]
            out[int(port)] = str(route.get("kind") or "tcp")
        return out

    def _revision(self, component: str, status: MachineStatus, live: Any) -> int | None:
        """The desired revision the live container is of: the reported one once the host
        settled there; before (a rollout under way, a halt), the one it had, else the
        newest kept revision of that image and config (None: none is kept)."""
        key = (live.image, live.config_hash)
        if status.status in SETTLED:
            revision: int | None = status.revision
        else:
            cached = self._revisions.get(component)
            revision = cached[1] if cached is not None and cached[0] == key else \
                _kept_revision(self.store.history(component), key)
        self._revisions[component] = (key, revision)
        return revision


def _kept_revision(entries: Iterable[Any], key: tuple[str, str]) -> int | None:
    revisions = [e.revision for e in entries
                 if e.status == "ready" and (e.image, e.config_hash) == key]
    return max(revisions, default=None)
