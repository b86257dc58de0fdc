"""`GET /metrics`: the fleet in Prometheus' exposition format (prometheus-client; OpenMetrics
when the scraper asks for it).

Stateless: every value is derived from the records kept in etcd, so any `gantryd serve`
answers the same. A scrape first reads etcd's store revision; when it has not moved since the
last scrape nothing can have changed and the records read then are used again, else they are
read afresh (per component: desired state, hosts, slots, endpoints, history, done markers,
events).
The counters (halts, reverts) and the duration histogram are computed from the kept history,
events and done markers, which are pruned with the revisions (`rollout.keepRevisions`,
default 100): they count the kept revisions, and may go down when old ones are pruned
(Prometheus treats that as a counter reset).

Labels: `project`, `component`, plus `status` (hosts), `pool` (slot holders: `lock` for
rollout slots, `pulls` for pull slots), `cause` (reverts), `healthy` (endpoints).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder

from .. import endpoints as EP
from .. import etcd as E
from .. import history as H
from .. import revisions, rollout
from ..split import SPLIT
from ..store import (MACHINE_STATUSES, PULL, SWITCH, Desired, Event, MachineStatus, Store,
                     StoreError)
from .app import Reply, Req, Routes, ServeContext
from .state import projects

log = logging.getLogger("gantryd.serve")

# Rollout durations (seconds from `update` to the done marker).
BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
STATUSES = tuple(dict.fromkeys((*MACHINE_STATUSES, SPLIT)))
REVERT_CAUSES = (H.AUTO_REVERT, H.ROLLBACK)
POOLS = (SWITCH, PULL)


@dataclass
class Records:
    """What one component's keys hold."""

    desired: Desired | None = None
    machines: list[MachineStatus] = field(default_factory=list)
    history: list[Desired] = field(default_factory=list)
    done: list[H.Done] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    slots: Counter = field(default_factory=Counter)  # pool -> holders
    endpoints: list[EP.Endpoint] = field(default_factory=list)


def read_project(store: Store) -> dict[str, Records]:
    """Component -> its records, for the components of the stored config, in its order
    (StoreError for an unreadable record)."""
    config = store.config_json() or {}
    names = [str(c.get("name")) for c in config.get("components") or ()
             if isinstance(c, dict)]
    try:
        return {name: read_component(store, name) for name in names}
    except ValueError as exc:  # a bad component name in a hand-written config
        raise StoreError(f"{store.keys.config}: {exc}") from None


def read_component(store: Store, name: str) -> Records:
    return Records(desired=store.desired(name), machines=store.machines(name),
                   history=store.history(name),
                   done=list(revisions.done(store, name).values()), events=store.events(name),
                   slots=Counter({pool: len(store.holders(name, pool)) for pool in POOLS}),
                   endpoints=EP.read(store, [name]))


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


G, C, HIST = GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
# Per component: key -> (family, name, help, labels besides project and component).
FAMILIES = {
    "revision": (G, "gantryd_desired_revision", "The desired revision", ()),
    "hosts": (G, "gantryd_hosts", "Live hosts by reported status", ("status",)),
    "in_progress": (G, "gantryd_rollout_in_progress",
                    "1 while a rollout has hosts still to reach the desired state", ()),
    "halted": (G, "gantryd_rollout_halted", "1 while the desired revision is halted", ()),
    "duration": (HIST, "gantryd_rollout_duration_seconds",
                 "Seconds from the update to every live host having reached it "
                 "(kept revisions)", ()),
    "halts": (C, "gantryd_rollout_halts", "Halted revisions (kept revisions)", ()),
    "reverts": (C, "gantryd_rollout_reverts",
                "Revisions made by a rollback or an auto-revert (kept revisions)", ("cause",)),
    "slots": (G, "gantryd_slot_holders", "Hosts holding a slot", ("pool",)),
    "last_done": (G, "gantryd_last_rollout_completed_timestamp_seconds",
                  "When the newest kept revision was reached by every live host", ()),
    "endpoints": (G, "gantryd_endpoints", "Published endpoints (host ports)", ("healthy",)),
}


class _Families:
    """The metric families of one scrape, filled component by component."""

    def __init__(self) -> None:
        self.up = G("gantryd_project_up", "1 when the project's records could be read, 0 when "
                    "one is unreadable (its other metrics are left out)", labels=["project"])
        self.f: dict[str, Metric] = {
            key: kind(name, doc, labels=["project", "component", *extra])
            for key, (kind, name, doc, extra) in FAMILIES.items()}

    def __iter__(self) -> Iterator[Metric]:
        return iter([self.up, *self.f.values()])

    def add(self, project: str, component: str, r: Records) -> None:
        at, f = [project, component], self.f
        if r.desired is not None:
            f["revision"].add_metric(at, r.desired.revision)
        statuses = Counter(m.status for m in r.machines)
        for status in dict.fromkeys((*STATUSES, *statuses)):
            f["hosts"].add_metric(at + [status], statuses[status])
        progress = rollout.progress(r.desired, r.machines)
        halted = r.desired is not None and r.desired.is_halted
        f["in_progress"].add_metric(at, int(not halted and bool(progress.pending)))
        f["halted"].add_metric(at, int(halted))
        seconds = [d.seconds for d in r.done if d.seconds is not None]
        f["duration"].add_metric(at, [(str(b), sum(s <= b for s in seconds)) for b in BUCKETS]
                                 + [("+Inf", len(seconds))], sum(seconds))
        f["halts"].add_metric(at, len(H.halts(r.events)))
        causes = Counter(H.cause_of(e) for e in r.history)
        for cause in REVERT_CAUSES:
            f["reverts"].add_metric(at + [cause], causes[cause])
        for pool in POOLS:
            f["slots"].add_metric(at + [pool], r.slots[pool])
        times = [t for d in r.done if (t := _timestamp(d.at)) is not None]
        if times:
            f["last_done"].add_metric(at, max(times))
        healthy = Counter(e.healthy for e in r.endpoints)
        for flag in (True, False):
            f["endpoints"].add_metric(at + [str(flag).lower()], healthy[flag])


class FleetCollector:
    """A custom collector: the fleet as etcd holds it at each scrape."""

    def __init__(self, etcd: E.Etcd, prefix: str):
        self.etcd = etcd
        self.prefix = prefix
        self._lock = threading.Lock()  # one reader at a time; the others use what it read
        self._read: tuple[int, dict[str, dict[str, Records] | StoreError]] | None = None

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for project, records in self.fleet().items():
            families.up.add_metric([project], int(not isinstance(records, StoreError)))
            if not isinstance(records, StoreError):
                for component, r in records.items():
                    families.add(project, component, r)
        yield from families

    def fleet(self) -> dict[str, dict[str, Records] | StoreError]:
        """Project -> its records (or why they cannot be read), as of now."""
        with self._lock:
            revision = self.etcd.revision()
            if self._read is not None and self._read[0] == revision:
                return self._read[1]
            before = self._read[1] if self._read else {}
            fleet = {project: self._project(project)
                     for project in projects(self.etcd, self.prefix)}
            for project, found in fleet.items():
                if isinstance(found, StoreError) and str(before.get(project)) != str(found):
                    log.warning("metrics: project %s left out: %s", project, found)  # once
            self._read = (revision, fleet)  # only once all was read (etcd may fail midway)
            return fleet

    def _project(self, project: str) -> dict[str, Records] | StoreError:
        try:
            return read_project(Store(self.etcd, project, self.prefix))
        except StoreError as exc:
            return exc


def metrics(ctx: ServeContext, req: Req) -> Reply:
    """The registry of this site, in the format the scraper asked for (Accept)."""
    encode, content_type = choose_encoder(req.headers.get("accept", ""))
    return Reply(200, encode(ctx.extra["metrics.registry"]), content_type)


def register(routes: Routes, ctx: ServeContext) -> None:
    """Add `GET /metrics`, with a registry of its own for this site."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx.etcd, ctx.prefix))
    ctx.extra["metrics.registry"] = registry
    routes.add("GET", "/metrics", metrics)

