"""Rollout rules as pure functions (no etcd, no Docker): what should this host do, is the
rollout done or failed, and did slot holders ever overlap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .history import revert_failure
from .store import EVENT_PREFIX, SWITCH, Desired, Event, MachineStatus

# Actions a host can take for one component.
IDLE = "idle"  # nothing to do; report `status`
DEPLOY = "deploy"  # pull, take a slot, run the lifecycle
STOP = "stop"  # drain and stop (no slot: a fleet-wide stop is meant to be fleet-wide)
KILL = "kill"
WAIT = "wait"  # a change is needed but the rollout is halted
CANARY = "canary"  # a local `gantry update` owns this host for now

ORIGIN_LOCAL = "gantry"  # io.gantry.origin of containers made by the single-host CLI


@dataclass(frozen=True)
class Live:
    """The component's live container on this host, as its Docker labels describe it."""

    image: str
    config_hash: str
    origin: str
    running: bool = True
    canary: Live | None = None  # the canary container of a weighted split (gantryd/split.py)
    percent: int | None = None  # on a canary: its share of new connections

    @property
    def local(self) -> bool:
        """Made by the local `gantry` CLI (either side of a split)."""
        return self.origin == ORIGIN_LOCAL or (self.canary is not None and self.canary.local)


@dataclass(frozen=True)
class Decision:
    action: str
    status: str  # what the host reports while/after acting
    reason: str = ""
    canary_revision: int | None = None


def runs(live: Live | None, image: str | None, config_hash: str | None) -> bool:
    """Is `live` running exactly this image and config?"""
    return (live is not None and live.running and live.image == image
            and live.config_hash == config_hash)


def matches(desired: Desired, live: Live | None) -> bool:
    """Does the host run exactly the desired state: the desired image and config alone, or
    for a canary, the stable side live and the canary at the desired percentage?"""
    if desired.canary is None:
        return runs(live, desired.image, desired.config_hash) and live.canary is None
    prev = desired.previous or {}
    return (runs(live, prev.get("image"), prev.get("configHash")) and live.canary is not None
            and runs(live.canary, desired.image, desired.config_hash)
            and live.canary.percent == desired.canary)


def settled(desired: Desired) -> str:
    """The status of a host that reached a `ready` desired state."""
    return "ready" if desired.canary is None else "split"


def decide(desired: Desired | None, live: Live | None, machine: str,
           canary_revision: int | None = None, secrets_changed: bool = False) -> Decision:
    """What `machine` should do about one component.

    `secrets_changed`: a valueFrom value of the live container changed on this host
    (gantryd/secret_check.py); the host then runs the desired state as if it did not match.

    Canary rule: a live container made by the local `gantry` CLI marks the host as a canary
    at the desired revision current when it was first seen (`canary_revision`); the fleet
    leaves it alone until a newer desired revision (the next `gantryd update`/stop/kill).
    """
    if desired is None:
        return Decision(IDLE, "idle", "no desired state in etcd yet")
    if live is not None and live.local:
        seen = desired.revision if canary_revision is None else canary_revision
        if desired.revision <= seen:
            return Decision(CANARY, "canary", f"local gantry deployed {live.image}",
                            canary_revision=seen)
    if desired.status in ("stopped", "killed"):
        if live is None:
            return Decision(IDLE, desired.status)
        return Decision(STOP if desired.status == "stopped" else KILL,
                        "stopping", f"desired status {desired.status}")
    if matches(desired, live) and not secrets_changed:
        return Decision(IDLE, settled(desired))
    if desired.is_halted:
        assert desired.halted is not None
        if desired.halted.machine == machine:
            return Decision(WAIT, "failed", desired.halted.error)
        return Decision(WAIT, "halted",
                        f"rollout halted: {desired.halted.machine} failed: {desired.halted.error}")
    why = "no live container" if live is None else (
        "container not running" if not live.running else
        "canary split" if desired.canary is not None or live.canary is not None else
        "new image" if live.image != desired.image else
        "config changed" if live.config_hash != desired.config_hash else "secret changed")
    return Decision(DEPLOY, "updating", why)


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands, from the hosts' reports."""

    done: bool
    failed: tuple[str, str] | None  # (machine, error)
    pending: tuple[str, ...]
    canaries: tuple[str, ...]
    frozen: tuple[str, ...] = ()  # hosts left out because they are frozen (gantryd/freeze.py)


def host_done(desired: Desired, status: MachineStatus) -> bool:
    if status.revision != desired.revision:
        return False
    if desired.status == "ready" and desired.canary is not None:
        return (status.status == "split" and status.split_image == desired.image
                and status.split_percent == desired.canary)
    if desired.status == "ready":
        return (status.status == "ready" and status.image == desired.image
                and status.config_hash == desired.config_hash)
    if desired.status == "stopped":
        return status.status == "stopped"
    return status.status in ("killed", "stopped")


def progress(desired: Desired | None, machines: Sequence[MachineStatus]) -> Progress:
    """Done once every live non-canary host reports the desired revision reached.

    No live host means not done (nothing has run it yet). A halt of this revision is a
    failure; a canary host is left out (the operator owns it until the next update).
    """
    if desired is None:
        return Progress(False, None, (), ())
    if desired.is_halted:
        assert desired.halted is not None
        return Progress(False, (desired.halted.machine, desired.halted.error), (), ())
    canaries = tuple(m.machine for m in machines if m.status == "canary")
    frozen = tuple(m.machine for m in machines if m.status == "frozen")
    fleet = [m for m in machines if m.status not in ("canary", "frozen")]
    pending = tuple(m.machine for m in fleet if not host_done(desired, m))
    # An auto-revert is done when the hosts are back, yet the rollout it answers failed.
    return Progress(bool(fleet) and not pending, revert_failure(desired), pending, canaries,
                    frozen)


def max_overlap(events: Iterable[Event], revision: int | None = None, pool: str = SWITCH) -> int:
    """Most slots of `pool` (rollout slots, or PULL) held at once according to the
    acquired/released/lost events in etcd order."""
    held: set[tuple[str, int | None]] = set()
    peak = 0
    prefix = EVENT_PREFIX[pool]
    for e in sorted(events, key=lambda e: e.etcd_revision):
        if revision is not None and e.revision != revision:
            continue
        if e.kind == prefix + "acquired":
            held.add((e.machine, e.slot))
            peak = max(peak, len(held))
        elif e.kind in (prefix + "released", prefix + "failed", prefix + "lost"):
            held.discard((e.machine, e.slot))
    return peak
