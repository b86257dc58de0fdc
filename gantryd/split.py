"""A weighted canary across the fleet (`gantryd update --canary`, `promote`, `abort`).

The desired state carries the canary (`Desired.canary`, a percentage) and its stable side
(`Desired.previous`: image, config hash, component snapshot and revision of the desired state
the canary was made over). Hosts reach it through the normal reconcile path
(`rollout.decide` -> DEPLOY under a rollout slot), where `apply` runs the lifecycle step:

| desired                        | host now                          | step                     |
|--------------------------------|-----------------------------------|--------------------------|
| canary of X at P over S        | S live, canary of X at P          | none: status `split`     |
| canary of X at P over S        | S live (no canary / another one)  | `Canary.start(X, P)`     |
| canary of X at P over S        | anything else                     | update to S, then start  |
| X (after `promote`)            | S live, canary of X               | `Canary.promote`         |
| S (after `abort`)              | S live, canary of X               | `Canary.abort`           |
| anything else                  |                                   | `Lifecycle.update`       |

A plain `gantryd update` during a canary therefore replaces both sides on every host, unless
it pins the canary's own image and config: that is a promote. A host whose canary container
was made by a local `gantry` stays a local canary (status `canary`, left alone).

The functions on Desired are pure; only `apply` touches the host.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from . import rollout as R
from .store import Desired, MachineStatus, StoreError, now_iso

SPLIT = "split"  # host status in the desired canary split (R.settled), shown `canary P%`

UPDATE, STABLE_THEN_CANARY, CANARY, PROMOTE, ABORT = (
    "update", "stable-then-canary", "canary", "promote", "abort")


class NoCanary(StoreError):
    """promote/abort of a component whose desired state has no canary."""


# -- desired-state transitions (pure) --------------------------------------------------------

def begin(new: Desired, current: Desired | None, percent: int) -> Desired:
    """`new` (freshly pinned) as a canary at `percent` over the current desired state; a
    canary already in place is replaced and keeps its stable side."""
    if current is not None and current.canary is not None:
        return replace(new, canary=percent, previous=current.previous)
    if current is None or current.status != "ready" or not current.image:
        raise StoreError("a canary needs a version to split with: run `gantryd update` "
                         "without --canary first")
    return replace(new, canary=percent, previous={
        "image": current.image, "configHash": current.config_hash,
        "component": current.component, "revision": current.revision})


def stable(desired: Desired) -> Desired:
    """The stable side of a canary desired state, as a desired state of its own."""
    if desired.canary is None or desired.previous is None:
        raise NoCanary(f"no canary in place (revision {desired.revision})")
    prev = desired.previous
    return Desired(status="ready", revision=desired.revision, image=prev.get("image"),
                   config_hash=prev.get("configHash"), component=prev.get("component"))


def promote(current: Desired | None) -> Desired:
    """Every host keeps the canary alone: the canary's image and config, no split."""
    if current is None or current.canary is None:
        raise NoCanary("no canary in place")
    return Desired(status="ready", revision=current.revision + 1, image=current.image,
                   config_hash=current.config_hash, component=current.component,
                   updated_at=now_iso())


def abort(current: Desired | None) -> Desired:
    """Every host goes back to the stable side alone."""
    if current is None or current.canary is None:
        raise NoCanary("no canary in place")
    return replace(stable(current), revision=current.revision + 1, updated_at=now_iso())


# -- what a host does (pure) -----------------------------------------------------------------

def _runs(live: R.Live | None, desired: Desired) -> bool:
    return R.runs(live, desired.image, desired.config_hash)


def step(desired: Desired, live: R.Live | None) -> str:
    """The lifecycle step that takes this host from `live` towards `desired` (see the table
    in the module doc)."""
    canary = live.canary if live is not None else None
    if desired.canary is not None:
        return CANARY if _runs(live, stable(desired)) else STABLE_THEN_CANARY
    if canary is not None and _runs(canary, desired):
        return PROMOTE
    if canary is not None and _runs(live, desired):
        return ABORT
    return UPDATE


def apply(life: Any, desired: Desired, live: R.Live | None,
          on_drained: Callable[[], None] | None = None) -> Any:
    """Run `step(desired, live)` through gantry's lifecycle (`life`: a Lifecycle).
    `on_drained`: see Lifecycle.update (a plain update only; the canary steps keep the old
    order). Answers the update's Deployment, None for a canary step."""
    from gantry.canary import Canary

    what = step(desired, live)
    model = desired.model()
    if what == STABLE_THEN_CANARY:
        base = stable(desired)
        life.update(base.model(), image=base.image)
    if what in (CANARY, STABLE_THEN_CANARY):
        assert desired.canary is not None
        Canary(life).start(model, desired.canary, image=desired.image)
    elif what == PROMOTE:
        Canary(life).promote(model)
    elif what == ABORT:
        Canary(life).abort(model)
    else:
        return life.update(model, image=desired.image, on_drained=on_drained)
    return None


# -- display -----------------------------------------------------------------------------------

def desired_status(desired: Desired) -> str:
    return f"canary {desired.canary}%" if desired.canary is not None else desired.status


def host_status(status: MachineStatus) -> str:
    """`split` is shown as `canary P%` (a local canary stays plain `canary`)."""
    if status.status == SPLIT:
        return f"canary {status.split_percent}%"
    return status.status
