"""The etcd key layout of one project (docs/fleet.md, "Keys").

```
<prefix>/projects/<p>/config                                  validated config (JSON)
<prefix>/projects/<p>/components/<c>/desired                  desired state (JSON)
<prefix>/projects/<p>/components/<c>/traffic                  pause / maintenance (JSON)
<prefix>/projects/<p>/components/<c>/machines/<m>             host status, on the host's lease
<prefix>/projects/<p>/components/<c>/claims/<m>               the daemon named m, on its lease
<prefix>/projects/<p>/components/<c>/lock/<slot>              rollout slot, on the holder's lease
<prefix>/projects/<p>/components/<c>/pulls/<slot>             pull slot, on the holder's lease
<prefix>/projects/<p>/components/<c>/waiters/<m>              a host waiting for a rollout slot
<prefix>/projects/<p>/components/<c>/freeze                   frozen hosts (JSON)
<prefix>/projects/<p>/components/<c>/history/<revision>       desired state of each revision
<prefix>/projects/<p>/components/<c>/done/<revision>          a revision every host reached
<prefix>/projects/<p>/components/<c>/endpoints/<m>/<port>     a host's live port, on its lease
<prefix>/projects/<p>/configlog/<version>                     who changed the config, when
<prefix>/projects/<p>/components/<c>/events/<revision>/<id>   slot acquired/released, failures
<prefix>/projects/<p>/components/<c>/notify/<revision>/<name> a notification claimed (JSON)
<prefix>/projects/<p>/components/<c>/notify/<revision>/<name>/owner  its deliverer, on its lease
<prefix>/projects/<p>/notify/cursor                           etcd revision notifiers had seen
<prefix>/projects/<p>/notify/leader                           the host that notifies, on its lease
```
Revisions in keys are zero-padded so that key order is numeric order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "/gantryd"

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")


def check_segment(what: str, value: str) -> str:
    """A project, component or machine name must be one safe key segment."""
    if not _SEGMENT.match(value or ""):
        raise ValueError(f"bad {what} name {value!r}: use letters, digits, '_', '.', '-', '@'")
    return value


def normalize_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip().strip("/")
    if prefix == "/":
        raise ValueError("the key prefix must not be empty")
    return prefix


def _rev(n: int) -> str:
    return f"{n:012d}"


@dataclass(frozen=True)
class KeyRef:
    """What a key under a project is about (see Keys.parse)."""

    component: str | None
    kind: str  # config | desired | traffic | machines | lock | pulls | waiters | freeze |
    #            history | done | events | endpoints | notify | other
    rest: str = ""


@dataclass(frozen=True)
class Keys:
    """Key names of one project under `prefix`."""

    project: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_segment("project", self.project)
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))

    @property
    def root(self) -> str:
        """Every key of the project starts with this (trailing slash included)."""
        return f"{self.prefix}/projects/{self.project}/"

    @property
    def config(self) -> str:
        return self.root + "config"

    def component(self, c: str) -> str:
        return f"{self.root}components/{check_segment('component', c)}/"

    def desired(self, c: str) -> str:
        return self.component(c) + "desired"

    def traffic(self, c: str) -> str:
        return self.component(c) + "traffic"

    def machines(self, c: str) -> str:
        return self.component(c) + "machines/"

    def machine(self, c: str, m: str) -> str:
        return self.machines(c) + check_segment("machine", m)

    def claim(self, c: str, m: str) -> str:
        """Which daemon runs as machine `m` (gantryd/claim.py), on its lease."""
        return f"{self.component(c)}claims/{check_segment('machine', m)}"

    def locks(self, c: str) -> str:
        return self.slots(c, "lock")

    def slots(self, c: str, pool: str) -> str:
        """The slot keys of one pool: `lock` (rollout/switch slots) or `pulls`."""
        return f"{self.component(c)}{pool}/"

    def waiters(self, c: str) -> str:
        """The hosts waiting for a rollout slot (gantryd/slot_queue.py), on their leases."""
        return self.component(c) + "waiters/"

    def waiter(self, c: str, m: str) -> str:
        return self.waiters(c) + check_segment("machine", m)

    def freeze(self, c: str) -> str:
        return self.component(c) + "freeze"

    def lock(self, c: str, slot: int, pool: str = "lock") -> str:
        return f"{self.slots(c, pool)}{slot}"

    def span(self, c: str, first: str, last: str) -> tuple[str, str]:
        """The key range of component `c` from its key `first` through every key under
        `last` (a prefix such as `lock/`), with all the keys between in key order: (start,
        end excluded), to watch as one range."""
        under = self.component(c)
        return under + first, under + last[:-1] + chr(ord(last[-1]) + 1)

    def history(self, c: str) -> str:
        return self.component(c) + "history/"

    def history_entry(self, c: str, revision: int) -> str:
        return self.history(c) + _rev(revision)

    def done(self, c: str) -> str:
        return self.component(c) + "done/"

    def done_entry(self, c: str, revision: int) -> str:
        return self.done(c) + _rev(revision)

    @property
    def config_log(self) -> str:
        return self.root + "configlog/"

    def config_log_entry(self, version: int) -> str:
        return self.config_log + _rev(version)

    def events(self, c: str) -> str:
        return self.component(c) + "events/"

    def endpoints(self, c: str) -> str:
        """The published ports of every host (gantryd/endpoints.py)."""
        return self.component(c) + "endpoints/"

    def endpoint(self, c: str, m: str, port: int) -> str:
        return f"{self.endpoints(c)}{check_segment('machine', m)}/{int(port)}"

    def events_of(self, c: str, revision: int) -> str:
        return f"{self.events(c)}{_rev(revision)}/"

    def notify(self, c: str) -> str:
        return self.component(c) + "notify/"

    def notify_of(self, c: str, revision: int) -> str:
        return f"{self.notify(c)}{_rev(revision)}/"

    def notify_entry(self, c: str, revision: int, name: str) -> str:
        """The claim of notification `name` (gantryd/notify.py) of `revision`."""
        return self.notify_of(c, revision) + check_segment("notification", name)

    def notify_owner(self, c: str, revision: int, name: str) -> str:
        """Who delivers that notification: a key on the deliverer's lease."""
        return self.notify_entry(c, revision, name) + "/owner"

    @property
    def notify_cursor(self) -> str:
        return self.root + "notify/cursor"

    @property
    def notify_leader(self) -> str:
        """The one host that watches for events and claims them (gantryd/notify.py)."""
        return self.root + "notify/leader"

    def parse(self, key: str) -> KeyRef:
        """Classify a key of this project (for watch filtering)."""
        if not key.startswith(self.root):
            return KeyRef(None, "other", key)
        rel = key[len(self.root):]
        if rel == "config":
            return KeyRef(None, "config")
        parts = rel.split("/", 3)
        if len(parts) >= 3 and parts[0] == "components":
            kind = parts[2] if parts[2] in ("desired", "traffic", "machines", "lock", "pulls",
                                            "waiters", "freeze", "history", "done", "events",
                                            "endpoints", "notify") \
                else "other"
            return KeyRef(parts[1], kind, parts[3] if len(parts) > 3 else "")
        return KeyRef(None, "other", rel)
