"""What fleet notifications say (pure): which etcd record is which event, its delivery id,
the payload, the Slack text, the signed request, and the retry schedule. The claiming and
delivering half is gantryd/notify.py.

Events come from the project's own records by one deterministic rule, so every host that sees
a record derives the same event with the same id, and the etcd claim of that id lets exactly
one of them deliver it:

```
components/<c>/history/<r> put       started (cause update, stop, kill, canary, promote,
                                      abort...), rolled-back (cause rollback), reverted
                                      (cause auto-revert)
components/<c>/done/<r> put          completed (with the seconds it took)
components/<c>/machines/<m> put      failed, when the host reports status failed (r: the
                                      revision it failed on)
components/<c>/events/<r>/<id> put   halted (kind halted); remediation (an acquired slot
                                      whose detail says "remediation: why")
```
Delivery id: `<project>.<component>.r<revision>.<name>`, name `<event>[.<machine>[.<n>]]`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from gantry.config.model import Notification
from gantry.errors import GantryError

from . import etcd as E
from . import history as H
from .keys import Keys
from .store import Desired, Event, MachineStatus, StoreError

STARTED, COMPLETED, FAILED, HALTED = "started", "completed", "failed", "halted"
REVERTED, ROLLED_BACK, REMEDIATION = "reverted", "rolled-back", "remediation"
REMEDIATION_PREFIX = "remediation: "  # the detail of a remediation's acquired event
ENV_BACKOFF = "GANTRYD_NOTIFY_BACKOFF"  # "first,cap,give-up" seconds
USER_AGENT = "gantryd-notify"


class NotifyError(GantryError):
    """A notification setting outside the config is wrong."""


@dataclass(frozen=True)
class Fact:
    """One notifiable event, as derived from one record."""

    kind: str
    component: str
    revision: int
    name: str  # unique among the notifications of (component, revision)
    at: str
    machine: str | None = None
    error: str | None = None
    duration: float | None = None
    desired: Desired | None = None  # the revision's record, when the fact came with it

    def delivery_id(self, project: str) -> str:
        return f"{project}.{self.component}.r{self.revision}.{self.name}"


def _kv(key: str, value: bytes, mod_revision: int) -> E.KeyValue:
    return E.KeyValue(key, value, mod_revision, mod_revision, 1, 0)


def derive(keys: Keys, key: str, value: bytes, mod_revision: int = 0) -> Fact | None:
    """The event a put of `key` with `value` is, if any (unreadable values are none)."""
    ref = keys.parse(key)
    if ref.component is None or ref.kind not in ("history", "done", "machines", "events"):
        return None
    c = ref.component
    kv = _kv(key, value, mod_revision)
    try:
        if ref.kind == "history":
            d = Desired.from_kv(kv)
            kind = {H.ROLLBACK: ROLLED_BACK, H.AUTO_REVERT: REVERTED}.get(d.cause, STARTED)
            machine = d.reverted.machine if d.reverted else None
            error = d.reverted.error if d.reverted else None
            return Fact(kind, c, d.revision, kind, d.updated_at, machine, error, desired=d)
        if ref.kind == "done":
            done = H.Done.from_json(json.loads(value))
            return Fact(COMPLETED, c, done.revision, COMPLETED, done.at, duration=done.seconds)
        if ref.kind == "machines":
            s = MachineStatus.from_kv(kv)
            if s.status != FAILED or not s.revision:
                return None
            return Fact(FAILED, c, s.revision, f"{FAILED}.{s.machine}", s.since, s.machine,
                        s.error)
        e = Event.from_kv(kv)
        if e.kind == HALTED:
            return Fact(HALTED, c, e.revision, HALTED, e.at, e.machine, e.detail)
        if e.kind == "acquired" and (e.detail or "").startswith(REMEDIATION_PREFIX):
            event_id = ref.rest.rsplit("/", 1)[-1]
            return Fact(REMEDIATION, c, e.revision, f"{REMEDIATION}.{e.machine}.{event_id}",
                        e.at, e.machine, e.detail[len(REMEDIATION_PREFIX):])
    except (StoreError, ValueError, TypeError, AttributeError):
        return None  # not ours to judge: the commands reading it say what is wrong
    return None


# -- payload -------------------------------------------------------------------------------

def payload(project: str, fact: Fact, entry: Desired | None) -> dict[str, Any]:
    """The JSON event (`entry`: the revision's history record, if still kept)."""
    entry = fact.desired or entry
    data: dict[str, Any] = {
        "id": fact.delivery_id(project), "event": fact.kind, "project": project,
        "component": fact.component, "revision": fact.revision, "at": fact.at,
        "cause": None, "actor": None, "image": None, "source": None,
        "machine": fact.machine, "error": fact.error, "duration": fact.duration}
    if entry is not None:
        data.update(cause=H.cause_of(entry), actor=entry.actor or None, source=entry.source,
                    image=H.image_label(entry) if entry.image else None)
    data["text"] = text(data)
    return data


def text(p: Mapping[str, Any]) -> str:
    """One line a human reads (Slack's `text`)."""
    where, r = f"{p['project']}/{p['component']}", f"r{p['revision']}"
    by = f" by {p['actor']}" if p.get("actor") else ""
    image = f": {p['image']}" if p.get("image") else ""
    cause = p.get("cause") or "update"
    kind = p["event"]
    if kind == STARTED:
        return f"{where}: rollout of {r} started ({cause}{by}){image}"
    if kind == COMPLETED:
        took = f" in {p['duration']:.0f} s" if p.get("duration") is not None else ""
        return f"{where}: rollout of {r} ({cause}) completed on every host{took}"
    if kind == FAILED:
        return f"{where}: {p['machine']} failed on {r}: {p['error']}"
    if kind == HALTED:
        return f"{where}: rollout of {r} halted fleet-wide ({p['machine']}: {p['error']})"
    if kind == REVERTED:
        return (f"{where}: auto-revert to r{p['source']} as {r} after {p['machine']} failed: "
                f"{p['error']}")
    if kind == ROLLED_BACK:
        return f"{where}: rollback to r{p['source']} started as {r}{by}{image}"
    return f"{where}: {p['machine']} unhealthy ({p['error']}); replacing its container"


def target_id(n: Notification) -> str:
    """A stable name of a target that keeps its URL (maybe a credential) out of records."""
    return hashlib.sha256(f"{n.format} {n.url}".encode()).hexdigest()[:12]


def request(n: Notification, event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one delivery of `event` to `n` (the same bytes on every try,
    whoever sends it: the signature and the delivery id do not change)."""
    data = {"text": event["text"]} if n.format == "slack" else event
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Gantry-Delivery": str(event["id"]), "X-Gantry-Event": str(event["event"])}
    if n.secret:
        headers["X-Hub-Signature-256"] = sign(n.secret.encode(), body)
    return body, headers


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of the raw body (as GitHub signs its webhooks)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- retries -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backoff:
    """Retry delays first, 2x first ... capped at `cap`; no new try `give_up` seconds after
    the event was claimed. The default keeps trying for an hour; after the receiver comes
    back, the next try is at most `cap` (30 s) away."""

    first: float = 1.0
    cap: float = 30.0
    give_up: float = 3600.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (0-based)."""
        return min(self.cap, self.first * 2 ** min(attempt, 30))

    @classmethod
    def from_env(cls) -> "Backoff":
        """`$GANTRYD_NOTIFY_BACKOFF` = `first,cap,give-up` (seconds; the tests shorten it)."""
        text = os.environ.get(ENV_BACKOFF, "").strip()
        if not text:
            return cls()
        try:
            first, cap, give_up = (float(x) for x in text.split(","))
        except ValueError:
            raise NotifyError(f"${ENV_BACKOFF} wants FIRST,CAP,GIVE_UP seconds, "
                              f"not {text!r}") from None
        if not 0 < first <= cap or give_up <= 0:
            raise NotifyError(f"${ENV_BACKOFF}: want 0 < FIRST <= CAP and GIVE_UP > 0, "
                              f"not {text!r}")
        return cls(first, cap, give_up)


def permanent(status: int) -> bool:
    """An answer no retry changes: a redirect (never followed: a POST must not become a GET
    elsewhere) or a 4xx other than timeout / too early / too many requests."""
    return 300 <= status < 500 and status not in (408, 425, 429)
