"""Writing a new desired revision: `update` (pin each image by digest) and `rollback` (re-pin an
earlier revision). One code path for every way a rollout starts: the CLI (`gantryd update`,
`gantryd rollback`), the HTTP API and the webhooks of `gantryd serve`.

Both decide on what they read, check before writing (an unknown component, a digest the
registry does not know, a revision no host can run) and write every component in one etcd
transaction that fails if a desired state moved meanwhile (history.expect): a refused change
writes nothing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import history as H
from . import revisions
from .store import Desired, Store, StoreError, now_iso

Shape = Callable[[Desired, "Desired | None"], Desired]


class DeployError(StoreError):
    """The change cannot be made (nothing was written)."""


@dataclass
class Written:
    """What a change wrote: the new desired state per component, and warnings."""

    desired: dict[str, Desired]
    warnings: list[str] = field(default_factory=list)


def resolve_image(docker_client, project: str, component) -> tuple[str, list[str]]:
    """`repo:tag` -> `repo@sha256:...` the way gantry does it (registry first, the local
    image only when the registry cannot be asked); answers the warnings too."""
    from gantry.lifecycle import Host, Lifecycle
    from gantry.progress import Reporter

    class Notes(Reporter):
        def __init__(self) -> None:
            super().__init__()
            self.warnings: list[str] = []

        def warning(self, message: str) -> None:
            self.warnings.append(message)

    notes = Notes()
    host = Host(docker_client, None, project, machine="-", origin="gantryd", reporter=notes)
    # Resolution needs no proxy; reuse gantry's rule rather than a copy of it.
    return Lifecycle(host).resolve(component), notes.warnings


def update(store: Store, names: Sequence[str], *, docker_url: str | None = None,
           tag: str | None = None, cause: str = H.UPDATE, actor: str | None = None,
           shape: Shape | None = None,
           expected: dict[str, str] | None = None) -> Written:
    """Pin each component's image (its configured tag, or `tag`) by digest and write it as a
    new revision. `expected` (component -> digest-pinned image) refuses the change when the
    registry now answers another digest (a webhook about a push the tag has moved past).
    ConfigError for an unknown component; GantryError when the image cannot be resolved."""
    from gantry.runtime import connect as docker_connect
    config = store.require_config()
    config.check_fleet()  # a config stored before gantryd refused builds
    components = {name: config.component(name) for name in names}
    if tag is not None:
        components = {n: dataclasses.replace(c, tag=tag) for n, c in components.items()}
    # An unreadable desired state fails here, before Docker is asked; what is read is what
    # the update is decided on (history.expect).
    seen = {name: store.desired(name) for name in components}
    pinned: dict[str, str] = {}
    warnings: list[str] = []
    docker_client = docker_connect(docker_url)
    try:
        for name, comp in components.items():
            pinned[name], notes = resolve_image(docker_client, store.project, comp)
            warnings += [f"{name}: {note}" for note in notes]
    finally:
        docker_client.close()
    for name, image in (expected or {}).items():
        if pinned.get(name) != image:
            raise DeployError(f"{name}: {components[name].image} is now {pinned.get(name)}, "
                              f"not {image}; not updated")

    def change(name: str, current: Desired | None) -> Desired:
        H.expect(name, seen[name], current, "update")
        comp = components[name]
        new = Desired(status="ready", revision=(current.revision if current else 0) + 1,
                      image=pinned[name], config_hash=comp.spec_hash(),
                      component=comp.to_dict(), updated_at=now_iso())
        new = H.stamp(new, cause, actor)
        return shape(new, current) if shape is not None else new
    return Written(store.change_desired(list(names), change), warnings)


def missing_image(store: Store, name: str, image: str, docker_url: str | None) -> str | None:
    """Why hosts could not run `image` (None: the registry has it, or every live host keeps
    it: retainImages)."""
    from gantry.errors import GantryError
    from gantry.runtime import Runtime, connect
    try:
        client = connect(docker_url)
        try:
            if Runtime(client).registry_has(image):
                return None
        finally:
            client.close()
    except GantryError:  # no Docker here: the hosts' retained images must do
        pass
    hosts = store.machines(name)
    lacking = [m.machine for m in hosts if image not in m.retained]
    if hosts and not lacking:
        return None
    where = f"; not retained on {', '.join(lacking)}" if hosts else "; no live host keeps it"
    return f"image {image} is not in the registry{where}"


def rollback(store: Store, names: Sequence[str], *, to: int | None = None,
             docker_url: str | None = None, cause: str = H.ROLLBACK,
             actor: str | None = None) -> Written:
    """Re-pin, for each component, revision `to` (one component only) or the last stable
    revision before the current one, as a new revision. DeployError (nothing written) when
    there is nothing to go back to or no host could run it."""
    if to is not None and len(names) > 1:
        raise DeployError("--to goes with one component")
    config = store.require_config()
    plans: dict[str, tuple[Desired, Desired]] = {}
    for name in names:
        config.component(name)  # an unknown one: ConfigError with a did-you-mean
        current = store.desired(name)
        if current is None:
            raise DeployError(f"{name}: never updated, nothing to roll back")
        target = H.rollback_target(store.history(name), revisions.done(store, name), current,
                                   to)
        problem = missing_image(store, name, target.image or "", docker_url)
        if problem is not None:
            raise DeployError(f"{name}: cannot roll back to revision {target.revision}: "
                              f"{problem}")
        plans[name] = (current, target)

    def change(name: str, current: Desired | None) -> Desired:
        seen, target = plans[name]
        H.expect(name, seen, current, "rollback")
        assert current is not None
        return H.repin(target, current, cause, actor or H.actor())
    return Written(store.change_desired(list(names), change))
