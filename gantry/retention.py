"""Image retention on one host: keep the images of the last ``retainImages`` versions a
component ran (for a quick rollback), remove older ones that gantry pulled for it.

The record lives on the component's containers, like everything else gantry knows: the label
``io.gantry.images`` holds ``{"ran": [refs, newest first], "pulled": [refs]}``. A new
container gets the live one's record with its own image in front, and "pulled" gains its
image when this process pulled it (``Runtime.pulled``: by ``gantry`` or by ``gantryd run``
before the lifecycle starts). So no local database, and any process may be killed: the
record is written atomically with the container. What this costs: an image pulled by a
process killed before its container was created counts as not pulled (kept for good), and
a component whose containers are all gone (``stop``) takes its record with it (the images
it kept stay).

Removal is ``docker rmi`` of the digest reference without force: the engine refuses an image
any container uses (kept, tried again after the next update), and an image that carries
other references (a tag someone set) only loses that reference.

Images built on the host (gantry/build.py) are gantry's own and count as pulled; a build that
no container ran (its update failed) is removed at the next switch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from . import build
from .errors import GantryError


@dataclass(frozen=True)
class Record:
    """The images one component ran on this host, newest first, and which gantry pulled."""

    ran: tuple[str, ...] = ()
    pulled: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Record:
        """The label's record; an absent or unreadable label is an empty record (nothing
        gantry can prove it pulled, so nothing is ever removed on its account)."""
        try:
            data = json.loads(text) if text else {}
            ran = tuple(str(r) for r in data.get("ran", ()))
            return cls(ran, frozenset(str(r) for r in data.get("pulled", ())) & set(ran))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps({"ran": list(self.ran), "pulled": sorted(self.pulled)},
                          separators=(",", ":"))

    def after(self, image: str, pulled: bool, keep: int,
              present: Callable[[str], bool]) -> Record:
        """The record of a new container of ``image``. Beyond the ``keep`` newest, only
        images gantry pulled that are still ``present`` stay listed: they are due for removal
        (so the label stays bounded)."""
        ran = tuple(dict.fromkeys((image, *self.ran)))
        mine = (self.pulled | {image}) if pulled else self.pulled
        ran = ran[:keep] + tuple(r for r in ran[keep:] if r in mine and present(r))
        return Record(ran, frozenset(mine & set(ran)))

    def kept(self, keep: int) -> tuple[str, ...]:
        return self.ran[:keep]

    def removable(self, keep: int) -> tuple[str, ...]:
        """Images gantry pulled beyond the ``keep`` newest."""
        return tuple(r for r in self.ran[keep:] if r in self.pulled)

    @property
    def previous(self) -> str | None:
        """The image run before the current one (``gantry rollback``)."""
        return self.ran[1] if len(self.ran) > 1 else None


def _live_record(life: Any, component: str) -> Record:
    live = life._view(component).live()
    return Record.parse(live.labels.images) if live is not None else Record()


def label_for(life: Any, component: Any, image: str) -> str:
    """The ``io.gantry.images`` label of a new container of ``component`` running ``image``
    (``life``: a Lifecycle)."""
    rt = life.runtime
    record = _live_record(life, component.name).after(image, image in rt.pulled,
                                                      component.retain_images, rt.has_image)
    return record.dump()


def prune(life: Any, component: Any) -> list[str]:
    """After a switch: remove the images gantry pulled that the live container's record no
    longer keeps. Never raises (a failure is a warning; the next update tries again)."""
    removed = []
    try:
        record = _live_record(life, component.name)
        old = f"not among the last {component.retain_images} retained"
        doomed = [(ref, old) for ref in record.removable(component.retain_images)]
        doomed += [(ref, "a build no container ran") for ref in _stray_builds(life, component,
                                                                              record)]
        for ref, why in doomed:
            if life.runtime.has_image(ref) and life.runtime.remove_image(ref):
                removed.append(ref)
                life.reporter.step(f"{component.name}: removed image {ref} ({why})")
    except GantryError as exc:
        life.reporter.warning(f"{component.name}: image retention: {exc}")
    return removed


def _stray_builds(life: Any, component: Any, record: Record) -> list[str]:
    """Images built for the component (gantry/build.py) that it never ran: their update
    failed. Its build repository is gantry's own, so they are gantry's to remove."""
    if component.build is None:
        return []
    repo = build.local_repo(life.host.project, component.name)
    return [ref for ref in life.runtime.tags(repo) if ref not in record.ran]


def retained(life: Any, component: str) -> tuple[str, ...]:
    """The images of the component's record that are on this host (newest first)."""
    return tuple(r for r in _live_record(life, component).ran if life.runtime.has_image(r))


def previous(life: Any, component: Any) -> str | None:
    """The image the component ran before its live one, if this host recorded one."""
    return _live_record(life, component.name).previous
