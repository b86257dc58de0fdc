"""Docker labels that identify gantry's containers (namespace ``io.gantry.``).

Containers are found by these labels only, never by image or name; nothing without
``io.gantry.project`` is ever touched (docs/internals.md, "Docker labels").
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

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
# The digest of the whole component config a container was made for (spec_digest), and the
# spec file `gantry watch` read it from (gantry/watch.py: what it may stop when the file goes).
SPEC = PREFIX + "spec"
SOURCE = PREFIX + "source"
# A salted digest of the valueFrom values the container was given (gantry/secret_env.py):
# tells a changed secret on this host without holding the value.
SECRETS = PREFIX + "secrets"

ORIGINS = ("gantry", "gantryd", "watch")
# Settings of the fleet alone: changing one changes nothing on a host (not in spec_digest).
FLEET_ONLY = ("rollout", "autoUpdate")


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
    spec: str = ""  # spec_digest of the component
    source: str = ""  # the spec file of a component of `gantry watch`
    secrets: str = ""  # secret_env digest of the valueFrom values; "" when there are none

    def to_dict(self) -> dict[str, str]:
        extra = {CANARY: self.canary} if self.canary else {}
        for key, value in ((IMAGES, self.images), (SPEC, self.spec), (SOURCE, self.source),
                           (SECRETS, self.secrets)):
            if value:
                extra[key] = value
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
            spec=labels.get(SPEC, ""),
            source=labels.get(SOURCE, ""),
            secrets=labels.get(SECRETS, ""),
        )


def spec_digest(component: Any) -> str:
    """16 hex digits of everything a host does with the component (image tag, checks and
    timeouts included; fleet-only settings aside): another digest means another container."""
    data = {k: v for k, v in component.to_dict().items() if k not in FLEET_ONLY}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def selector(project: str, machine: str, component: str | None = None) -> list[str]:
    """Docker ``label`` filters selecting one project's containers on one machine."""
    sel = [f"{PROJECT}={project}", f"{MACHINE}={machine}"]
    if component is not None:
        sel.append(f"{COMPONENT}={component}")
    return sel
