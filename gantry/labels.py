"""Docker labels that identify gantry's containers (namespace ``io.gantry.``).

Containers are found by these labels only, never by image or name; nothing without
``io.gantry.project`` is ever touched (docs/internals.md, "Docker labels").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

PREFIX = "io.gantry."
PROJECT = PREFIX + "project"
COMPONENT = PREFIX + "component"
MACHINE = PREFIX + "machine"
CONFIG_HASH = PREFIX + "config-hash"
IMAGE = PREFIX + "image"
ORIGIN = PREFIX + "origin"
# The percentage a canary container was created for (gantry/canary.py); absent otherwise.
CANARY = PREFIX + "canary"
# The images this component ran on this host and which of them gantry pulled
# (gantry/retention.py); each new container carries the record forward.
IMAGES = PREFIX + "images"

ORIGINS = ("gantry", "gantryd")


@dataclass(frozen=True)
class GantryLabels:
    """The labels gantry puts on a container it creates."""

    project: str
    component: str
    machine: str
    config_hash: str
    image: str
    origin: str
    canary: str = ""  # set only on a canary container: the percentage it was made for
    images: str = ""  # the retention record (gantry/retention.py), JSON

    def to_dict(self) -> dict[str, str]:
        extra = {CANARY: self.canary} if self.canary else {}
        if self.images:
            extra[IMAGES] = self.images
        return {
            PROJECT: self.project,
            COMPONENT: self.component,
            MACHINE: self.machine,
            CONFIG_HASH: self.config_hash,
            IMAGE: self.image,
            ORIGIN: self.origin,
            **extra,
        }

    @classmethod
    def from_dict(cls, labels: Mapping[str, str]) -> "GantryLabels":
        return cls(
            project=labels.get(PROJECT, ""),
            component=labels.get(COMPONENT, ""),
            machine=labels.get(MACHINE, ""),
            config_hash=labels.get(CONFIG_HASH, ""),
            image=labels.get(IMAGE, ""),
            origin=labels.get(ORIGIN, ""),
            canary=labels.get(CANARY, ""),
            images=labels.get(IMAGES, ""),
        )


def selector(project: str, machine: str, component: str | None = None) -> list[str]:
    """Docker ``label`` filters selecting one project's containers on one machine."""
    sel = [f"{PROJECT}={project}", f"{MACHINE}={machine}"]
    if component is not None:
        sel.append(f"{COMPONENT}={component}")
    return sel
