"""Revisions, audit, rollback and auto-revert rules, as pure functions over the records.

Every desired state is kept as `history/<revision>` (written in the transaction that makes
it), with who wrote it (`actor`), why (`cause`), for a rollback or auto-revert the revision
it re-pinned (`source`), and for an auto-revert the failure it answers (`reverted`). A
revision every live host reached gets a `done/<revision>` marker (gantryd/revisions.py);
a done revision of status `ready` without a canary is *stable*: what rollback and auto-revert
go back to, even after its events were pruned. The etcd side is gantryd/revisions.py.
"""
from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from .store import Conflict, Desired, Event, Halt, StoreError, now_iso

ENV_ACTOR = "GANTRYD_ACTOR"
UPDATE, ROLLBACK, AUTO_REVERT, STOP, KILL = "update", "rollback", "auto-revert", "stop", "kill"
# Updates made by the hooks of `gantryd serve` (gantryd/serve/hooks.py): a registry's push
# notification, a signed webhook.
REGISTRY, WEBHOOK = "registry", "webhook"


class NoTarget(StoreError):
    """No revision to roll back to (unknown, not a version, or none stable)."""


def actor() -> str:
    """Who makes a change, for the record: `$GANTRYD_ACTOR`, else user@host."""
    if os.environ.get(ENV_ACTOR):
        return os.environ[ENV_ACTOR]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "?"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Done:
    """A revision every live host reached: when, and how long after it was written."""

    revision: int
    at: str
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "at": self.at, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Done:
        seconds = data.get("seconds")
        return cls(int(data.get("revision") or 0), str(data.get("at") or ""),
                   float(seconds) if isinstance(seconds, (int, float)) else None)


def seconds_between(start: str, end: str) -> float | None:
    """Seconds from one of our ISO timestamps to another (None if either is unreadable)."""
    try:
        return (datetime.fromisoformat(end.replace("Z", "+00:00"))
                - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None


def is_stable(entry: Desired, done: Mapping[int, Done]) -> bool:
    """A version every live host ran: what rollback and auto-revert go back to."""
    return (entry.revision in done and entry.status == "ready" and entry.canary is None
            and bool(entry.image))


def cause_of(entry: Desired) -> str:
    """What made a revision (older records without a cause: update, or a canary)."""
    if entry.cause:
        return entry.cause
    if entry.canary is not None:
        return "canary"
    return {"stopped": STOP, "killed": KILL}.get(entry.status, UPDATE)


def image_label(entry: Desired) -> str:
    """`repo:tag@sha256:...`: the pinned digest with the tag it was pinned from."""
    if not entry.image:
        return "-"
    tag = (entry.component or {}).get("tag")
    repo, sep, digest = entry.image.partition("@")
    return f"{repo}:{tag}@{digest}" if sep and tag else entry.image


# -- outcome -----------------------------------------------------------------------------------

def halts(events: Iterable[Event]) -> dict[int, tuple[str, str]]:
    """revision -> (machine, error) of the first failure that halted it."""
    out: dict[int, tuple[str, str]] = {}
    for e in sorted(events, key=lambda e: e.etcd_revision):
        if e.kind == "halted" and e.revision not in out:
            out[e.revision] = (e.machine, e.detail or "")
    return out


def outcome(entry: Desired, entries: Sequence[Desired], current: Desired | None,
            done: Mapping[int, Done], events: Sequence[Event]) -> str:
    """rolled out in N s / halted on host X: error / reverted / superseded by rK / in
    progress (`entries`: every kept revision of the component)."""
    r = entry.revision
    if r in done:
        verb = {"stopped": "stopped", "killed": "killed"}.get(entry.status, "rolled out")
        secs = done[r].seconds
        return f"{verb} in {secs:.0f} s" if secs is not None else verb
    revert = next((e for e in entries if e.reverted and e.reverted.revision == r), None)
    halt = halts(events).get(r)
    if halt is None and current is not None and current.revision == r and current.is_halted:
        assert current.halted is not None
        halt = (current.halted.machine, current.halted.error)
    if revert is not None and revert.reverted is not None:
        return (f"halted on {revert.reverted.machine}: {revert.reverted.error}; "
                f"reverted by r{revert.revision}")
    if halt is not None:
        return f"halted on {halt[0]}: {halt[1]}"
    if current is None or r >= current.revision:
        return "in progress"
    later = min((e.revision for e in entries if e.revision > r), default=current.revision)
    return f"superseded by r{later}"


def host_times(events: Iterable[Event], revision: int) -> dict[str, dict[str, str | None]]:
    """machine -> {"start", "end"} of its slot for `revision` (first acquired, last end)."""
    out: dict[str, dict[str, str | None]] = {}
    for e in sorted(events, key=lambda e: e.etcd_revision):
        if e.revision != revision:
            continue
        if e.kind == "acquired":
            out.setdefault(e.machine, {"start": e.at, "end": None})
        elif e.kind in ("released", "failed", "lost") and e.machine in out:
            out[e.machine]["end"] = e.at
    return out


def rows(entries: Sequence[Desired], current: Desired | None, done: Mapping[int, Done],
         events: Sequence[Event], limit: int | None = None) -> list[dict[str, Any]]:
    """One row per kept revision, newest first (at most `limit`)."""
    ordered = sorted(entries, key=lambda e: e.revision, reverse=True)[:limit]
    return [{
        "revision": e.revision, "at": e.updated_at, "actor": e.actor or "-",
        "cause": cause_of(e) + (f" to r{e.source}" if e.source is not None else ""),
        "image": image_label(e), "configHash": e.config_hash,
        "outcome": outcome(e, entries, current, done, events),
        "stable": is_stable(e, done), "hosts": host_times(events, e.revision),
    } for e in ordered]


# -- rollback and auto-revert ------------------------------------------------------------------

def last_stable(entries: Sequence[Desired], done: Mapping[int, Done],
                current: Desired) -> Desired | None:
    """The newest stable revision before `current` that runs something else than it."""
    for e in sorted(entries, key=lambda e: e.revision, reverse=True):
        if e.revision < current.revision and is_stable(e, done) and (
                e.image, e.config_hash) != (current.image, current.config_hash):
            return e
    return None


def rollback_target(entries: Sequence[Desired], done: Mapping[int, Done], current: Desired,
                    to: int | None = None) -> Desired:
    """The revision `gantryd rollback` re-pins: `to`, else the last stable one."""
    if to is None:
        target = last_stable(entries, done, current)
        if target is None:
            raise NoTarget(f"no stable revision before r{current.revision} to roll back to "
                           "(see `gantryd history`; or name one with --to)")
        return target
    target = next((e for e in entries if e.revision == to), None)
    kept = sorted(e.revision for e in entries)
    if target is None:
        span = f"r{kept[0]}..r{kept[-1]}" if kept else "none"
        raise NoTarget(f"unknown revision {to} (kept: {span})")
    if target.status != "ready" or not target.image:
        raise NoTarget(f"revision {to} {target.status} the component: not a version to roll "
                       "back to")
    return target


def repin(target: Desired, current: Desired, cause: str, who: str,
          reverted: Halt | None = None) -> Desired:
    """A new revision after `current` with exactly `target`'s digest and config snapshot
    (a canary revision goes back to its stable side: rollback re-pins versions)."""
    return Desired(status="ready", revision=current.revision + 1, image=target.image,
                   config_hash=target.config_hash, component=target.component,
                   updated_at=now_iso(), actor=who, cause=cause, source=target.revision,
                   reverted=reverted)


def stamp(new: Desired, cause: str, who: str | None = None) -> Desired:
    """`new` recorded as made by `who` (default: this process's actor) for `cause`."""
    return replace(new, cause=cause, actor=who or actor())


def expect(name: str, seen: Desired | None, current: Desired | None, what: str) -> None:
    """Refuse to write `what` over a desired state other than the one it was decided on
    (a halt keeps the revision: that is no change). One of two racing writers wins by etcd
    revision; the other gets this error instead of silently stacking its change on top."""
    if (seen.revision if seen else 0) == (current.revision if current else 0):
        return
    assert current is not None
    by = f" ({cause_of(current)} by {current.actor})" if current.actor else ""
    raise Conflict(f"{name}: the desired state changed meanwhile: now revision "
                   f"{current.revision}{by}; {what} not written (see `gantryd history`)")


def reverts(policy: str, failed: Desired) -> bool:
    """Does a failure of `failed` revert the fleet (`rollout.onFailure: rollback`)? A revert
    that fails halts: never a loop."""
    return policy == "rollback" and failed.cause != AUTO_REVERT and failed.status == "ready"


def revert_failure(desired: Desired) -> tuple[str, str] | None:
    """(machine, error) of the failure an auto-revert revision answers: for `wait`, the
    rollout it waited for failed, and says so, with where the fleet went back to."""
    if desired.cause != AUTO_REVERT or desired.reverted is None:
        return None
    return (desired.reverted.machine,
            f"{desired.reverted.error}; revision {desired.reverted.revision} was reverted "
            f"(revision {desired.revision} goes back to revision {desired.source})")


# -- setconfig audit ---------------------------------------------------------------------------

def config_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, list]:
    """Which components a config change added, removed or changed."""
    before = {c.get("name"): c for c in (old or {}).get("components", ())}
    after = {c.get("name"): c for c in new.get("components", ())}
    return {"added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(n for n in set(after) & set(before) if after[n] != before[n])}
