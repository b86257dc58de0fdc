"""Following a rollout: host status snapshots in, transitions and a summary out (pure).

`gantryd update --wait` and `gantryd wait` feed every host status the etcd watch delivers
(and the snapshot they start from) into a `Follower`; it answers a `Transition` when a host's
status, revision, image or error changed, and remembers when each host started working on
the desired revision and when it reached it, for the summary. Rendering is gantryd/follow_view.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .rollout import host_done
from .store import Desired, MachineStatus

WORKING = ("pulling", "waiting", "updating", "restarting")  # a host on its way to a revision
GONE = "gone"  # the status key went (with the host's lease)


def version_label(image: str | None, tags: Mapping[str, str]) -> str:
    """`tag@<12 hex>` (the tag it was pinned from, when known), else `sha256:<12 hex>`."""
    if not image:
        return "-"
    _, sep, digest = image.partition("@sha256:")
    if not sep:
        return image
    tag = tags.get(image)
    return f"{tag}@{digest[:12]}" if tag else f"sha256:{digest[:12]}"


def pinned_tags(entries: list[Desired]) -> dict[str, str]:
    """image -> the tag it was pinned from, from the kept revisions (history entries)."""
    out: dict[str, str] = {}
    for e in sorted(entries, key=lambda e: e.revision):
        tag = (e.component or {}).get("tag")
        if e.image and isinstance(tag, str):
            out[e.image] = tag
    return out


@dataclass(frozen=True)
class Transition:
    """One host of one component changed state, `elapsed` seconds into the follow."""

    component: str
    machine: str
    status: str
    revision: int
    image: str | None
    error: str | None
    elapsed: float
    time: str  # wall clock, ISO 8601
    detail: str = ""  # what the status means here ("waiting for a rollout slot"...)

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "component": self.component, "status": self.status,
                "revision": self.revision, "image": self.image, "time": self.time,
                "elapsed": round(self.elapsed, 3), "error": self.error}


@dataclass
class HostTrack:
    """What the follower knows of one host: its last state and its timings."""

    status: str = "-"
    revision: int = 0
    image: str | None = None
    error: str | None = None
    changed: float = 0.0
    start: float | None = None  # first seen working on the desired revision
    end: float | None = None  # first seen at the desired revision


@dataclass(frozen=True)
class SummaryRow:
    component: str
    machine: str
    version: str
    start: float | None
    duration: float | None
    status: str


@dataclass
class Follower:
    """Transitions of every host of the followed components."""

    desired: dict[str, Desired | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    hosts: dict[tuple[str, str], HostTrack] = field(default_factory=dict)

    def observe(self, component: str, machine: str, status: MachineStatus | None,
                elapsed: float, time: str) -> Transition | None:
        """Fold one host status (None: its key went) in; answer the transition, if any."""
        track = self.hosts.setdefault((component, machine), HostTrack())
        now = (GONE, track.revision, track.image, None) if status is None else (
            status.status, status.revision, status.image, status.error)
        if now == (track.status, track.revision, track.image, track.error):
            return None
        track.status, track.revision, track.image, track.error = now
        track.changed = elapsed
        desired = self.desired.get(component)
        if desired is not None and status is not None and status.revision == desired.revision:
            if track.start is None and status.status in WORKING:
                track.start = elapsed
            if track.end is None and host_done(desired, status):
                track.end = elapsed
        return Transition(component, machine, track.status, track.revision, track.image,
                          track.error, elapsed, time, self.describe(component, track))

    def describe(self, component: str, track: HostTrack) -> str:
        """The state in words, with the version it is about."""
        desired = self.desired.get(component)
        target = version_label(desired.image if desired else None, self.tags)
        here = version_label(track.image, self.tags)
        error = f": {track.error}" if track.error else ""
        return {
            "pulling": f"pulling {target}",
            "waiting": track.error or "waiting for a slot",
            "updating": f"updating {here} -> {target}",
            "restarting": f"restarting {here}{error}",
            "ready": f"ready on {here}",
            "split": f"split, canary {target}",
            "failed": f"failed{error}",
            "halted": f"halted (skipped){error}",
            "canary": f"canary (skipped: a local gantry update runs {here})",
            "frozen": "frozen (skipped)",
            GONE: "gone (its lease expired or it stopped)",
        }.get(track.status, f"{track.status}{error}")

    def summary(self) -> list[SummaryRow]:
        """Per host: the version it runs now, when it started and how long it took."""
        rows = []
        for (component, machine), t in sorted(self.hosts.items()):
            start = t.start if t.start is not None else t.end
            took = t.end - start if t.end is not None and start is not None else None
            rows.append(SummaryRow(component, machine, version_label(t.image, self.tags),
                                   start, took, t.status))
        return rows
