"""`gantryd run`: the per-host daemon.

One loop per host: wake up on an etcd watch event (desired state or a rollout slot of one of
our components changed), or on the periodic self-check, then reconcile every component:
read the desired state, look at the live container (Docker labels + proxy), decide
(gantryd.rollout.decide) and act through gantry's lifecycle. etcd trouble never touches the
containers or the proxy: the loop backs off (capped) and carries on when etcd answers.
"""
from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from gantry import retention
from gantry.errors import GantryError, RouteError

from . import etcd as E
from . import rollout as R
from . import freeze, revisions, split
from .endpoints import Publisher
from .claim import Claimant, MachineTaken, claim, claim_at_start
from .health import HealthWatch
from .notify import Notifier
from .pulls import Pulls
from .secret_check import SecretCheck
from .slot_queue import SlotQueue
from .store import Desired, Event, MachineStatus, Slot, Store, StoreError, now_iso
from .traffic_sync import TrafficSync

log = logging.getLogger("gantryd.daemon")

RESYNC_INTERVAL = 30.0  # self-check without any event (a container that died, missed events)
DOCKER_EVENTS = ("start", "die", "destroy")  # of our containers: wake the loop
BACKOFF_START, BACKOFF_MAX = 0.25, 5.0
SETTLED = ("ready", "split", "stopped", "killed")  # a host that reached the desired state


@dataclass
class _Outcome:
    """A finished lifecycle run whose etcd writes are still to be done (retried until done)."""

    slot: Slot
    desired: Desired
    error: str | None
    remediation: str | None = None  # why an unhealthy container was replaced (no halt)


class Daemon:
    """Keeps `components` of one project on this host as etcd says.

    `lifecycle`: a gantry.lifecycle.Lifecycle of this host (origin "gantryd").
    """

    def __init__(self, store: Store, components: Sequence[str], machine: str, lifecycle: Any,
                 lease_ttl: int = 15, resync_interval: float = RESYNC_INTERVAL,
                 repair: Callable[[], None] | None = None,
                 proxy_pid: Callable[[], int | None] | None = None,
                 advertise: str | None = None, lease: E.Lease | None = None,
                 claimant: Claimant | None = None):
        self.store = store
        self.components = list(dict.fromkeys(components))
        self.machine = machine
        self.lifecycle = lifecycle
        self.lease_ttl = lease_ttl
        self.resync_interval = resync_interval
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.lease: E.Lease | None = lease  # taken with our name claimed (claim_at_start)
        self.claimant = claimant or Claimant.me()  # who we are, in our machine-name claim
        self.reported: dict[str, MachineStatus] = {}
        self.outcomes: dict[str, _Outcome] = {}
        self.canary: dict[str, int] = {}  # component -> desired revision when first seen
        self.recovered: set[str] = set()
        self._kept: dict[str, tuple[Any, tuple[str, ...]]] = {}  # component -> retained images
        self.repair = repair  # restarts the local proxy when it stopped answering
        self.proxy_pid = proxy_pid  # the local proxy's pid, None when it does not answer
        self._problem: str | None = None
        self._watch: E.Watches | None = None
        self._docker_events: Any = None
        # Set by a turn that made, moved or removed routes: the traffic thread then looks at
        # them once (not on every turn: that is an etcd read per wake-up of every host).
        self._routes_touched = False
        # Pause/maintenance from etcd, applied in a thread of its own (fast while we update);
        # a change of what the routes do is reported through our loop.
        self.traffic = TrafficSync(store, self.components, lifecycle, on_change=self.wake.set)
        # Health checks in a thread of their own; remediation goes through our loop.
        self.health = HealthWatch(lifecycle, on_unhealthy=self.wake.set)
        self.pulls = Pulls(store, machine, lifecycle.runtime)  # rollout.maxParallelPulls
        self.queue = SlotQueue(store, machine)  # who a freed rollout slot wakes
        self.secrets = SecretCheck(lifecycle)  # valueFrom values rotated on this host
        # Our live ports under the advertised address, for load balancers (gantryd/endpoints.py).
        self.endpoints = Publisher(store, machine, advertise, lifecycle)
        # Rollout notifications (gantryd/notify.py): threads of their own, on our lease, and
        # delivered by one host of the fleet at a time (elected).
        self.notifier = Notifier(store, machine, lease_ttl)
        self.notifier.elect(lambda: self.lease)

    # -- wiring ----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.traffic.poke()
        self.health.poke()

    def _watched(self) -> list[E.Range]:
        """The keys `_on_watch` reacts to, and the notifier's: not the whole project, whose
        keys a rollout writes most (every host's status, events, endpoints) would reach every
        host. Neighbouring keys share a range (a stream and a thread each)."""
        k, ranges = self.store.keys, list(self.notifier.ranges)
        for c in self.components:
            slots = k.span(c, "freeze", "lock/")  # freeze, history/ (a put per revision), lock/
            gone = k.span(c, "machines/", "waiters/")  # ... notify/, pulls/, traffic, waiters/
            ranges += [E.Range(k.desired(c)), E.Range(k.traffic(c)),
                       E.Range(slots[0], end=slots[1]),
                       E.Range(gone[0], end=gone[1], puts=False)]
        return ranges

    def _on_watch_shared(self, batch: E.WatchBatch) -> None:
        self.notifier.feed(batch)
        self._on_watch(batch)

    def _on_watch(self, batch: E.WatchBatch) -> None:
        if batch.resync:
            self.queue.forget()
            self.wake.set()
            self.traffic.poke()
            return
        for event in batch.events:
            ref = self.store.keys.parse(event.key)
            if ref.component not in self.components:
                continue
            if ref.kind == "traffic":
                self.traffic.poke()
            elif ref.kind in ("desired", "freeze"):
                self.wake.set()
            elif ref.kind == "lock":
                # Only a release (or an expiry) can let a waiting host on, and only the
                # first in line wake for it (gantryd/slot_queue.py).
                if self.queue.slot_changed(ref.component, event.key, event.kind == "delete",
                                           event.mod_revision):
                    self.wake.set()
            elif event.kind != "delete":
                continue
            elif ref.kind == "waiters":
                if self.queue.waiter_gone(ref.component, event.key, event.mod_revision):
                    self.wake.set()
            elif ref.kind == "pulls":
                self.wake.set()
            elif ref.kind == "machines" and ref.rest == self.machine:
                self.wake.set()  # our status vanished (lease expired): report again

    def _on_watch_state(self, up: bool) -> None:
        # Up: changes made while we were cut off are replayed; re-check anyway.
        # Down: find out (and say) whether etcd is gone, instead of idling unaware.
        self.queue.forget()
        self.wake.set()
        self.traffic.poke()

    def _watch_docker(self) -> None:
        """Wake up when a container of ours starts or dies (a local `gantry update`, a
        crash): Docker's event stream, filtered by our labels, instead of polling."""
        from gantry import labels as L
        client = self.lifecycle.runtime.client
        # Only the events we act on: an image's HEALTHCHECK alone makes Docker send several
        # exec events a second, each a wake-up of this thread if not filtered by the engine.
        filters = {"type": "container", "event": list(DOCKER_EVENTS),
                   "label": L.selector(self.store.project, self.machine)}
        while not self.stopping.is_set():
            try:
                self._docker_events = client.events(filters)
                self.wake.set()  # (re)connected: what happened meanwhile was not seen
                self.health.containers_changed(watched=True)
                for event in self._docker_events:
                    attrs = (event.get("Actor") or {}).get("Attributes") or {}
                    if event.get("status") in DOCKER_EVENTS and \
                            attrs.get(L.COMPONENT) in self.components:
                        self.health.containers_changed(watched=True)
                        self.wake.set()
            except Exception as exc:  # the engine restarted, or we are stopping
                log.debug("docker event stream ended: %s", exc)
            self.health.containers_changed(watched=False)  # unseen changes until reconnected
            self.stopping.wait(1.0)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> None:
        log.info("gantryd %s: managing %s of project %s", self.machine,
                 ", ".join(self.components), self.store.project)
        try:
            self._ensure_lease()  # claims the machine name: refuse before touching anything
        except MachineTaken:
            raise
        except Exception as exc:  # etcd away: the loop claims it once etcd answers
            self._trouble(exc)
        self._watch = self.store.etcd.watch(self._watched(), self._on_watch_shared,
                                            self._on_watch_state)
        threading.Thread(target=self._watch_docker, name="docker-events", daemon=True).start()
        threading.Thread(target=self.traffic.run, args=(self.stopping,), name="traffic",
                         daemon=True).start()
        threading.Thread(target=self.health.run, args=(self.stopping,), name="health",
                         daemon=True).start()
        self.notifier.start()
        if self.repair is not None and self.proxy_pid is not None:
            threading.Thread(target=self._keep_proxy, name="proxy-keeper", daemon=True).start()
        delay = BACKOFF_START
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    self._ensure_lease()
                    for component in self.components:
                        if self.stopping.is_set():
                            break
                        self.pulls.settle(component)
                        self._finish(component)
                        self.reconcile(component)
                    self._healthy()
                    if self._routes_touched:  # a route this turn made gets its pause too
                        self._routes_touched = False
                        self.traffic.poke()
                    delay = BACKOFF_START
                    self.wake.wait(self.resync_interval)
                except MachineTaken:
                    raise  # another daemon runs under our name: leave it the host
                except Exception as exc:  # never die on one bad turn: retry with backoff
                    if isinstance(exc, E.LeaseLost) and self.lease is not None:
                        self.lease.lost.set()  # expired in an outage: take a new one
                    self._trouble(exc)
                    if isinstance(exc, RouteError) and self.repair is not None:
                        self._repair()
                    self.stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._shutdown()

    def _trouble(self, exc: Exception) -> None:
        """Log a problem once per change of state, not per retry."""
        kind = "etcd" if isinstance(exc, E.EtcdUnavailable) else type(exc).__name__
        message = f"{kind}: {exc}"
        if kind != (self._problem or "").split(":", 1)[0] or (
                kind != "etcd" and message != self._problem):
            if isinstance(exc, E.EtcdUnavailable):
                log.warning("etcd unreachable (%s); containers keep serving, retrying", exc)
            elif isinstance(exc, (E.EtcdError, StoreError, GantryError, OSError)):
                log.warning("%s; retrying", message)
            else:  # a bug: show where
                log.exception("unexpected error; retrying")
            self._problem = message

    def _repair(self) -> None:
        try:
            self.repair()
        except Exception as exc:  # reported by the next failing call anyway
            log.debug("proxy restart failed: %s", exc)

    def _keep_proxy(self) -> None:
        """Restart the local proxy as soon as it dies (kill -9, crash): wait on a pidfd of its
        process, so no polling; its routes come back from its state file, and the loop then
        re-checks them (wake)."""
        while not self.stopping.is_set():
            pid = self._current_proxy_pid()
            if pid is None:
                log.warning("gantry-proxy does not answer; starting it")
                self._repair()
                self.wake.set()
                self.stopping.wait(1.0)
                continue
            if _wait_exit(pid, self.stopping, idle_slice=self.resync_interval) and \
                    not self.stopping.is_set():
                log.warning("gantry-proxy (pid %d) exited; restarting it", pid)
                self._repair()
                self.wake.set()
                self.traffic.poke()

    def _current_proxy_pid(self) -> int | None:
        try:
            return self.proxy_pid() if self.proxy_pid is not None else None
        except Exception:  # does not answer: treated as down
            return None

    def _healthy(self) -> None:
        if self._problem is not None:
            log.info("back to normal (was: %s)", self._problem)
            self._problem = None

    def _shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self.notifier.close()  # what it still had to send goes to another host at once
        if self._docker_events is not None:
            try:
                self._docker_events.close()
            except Exception:  # closing a broken stream: nothing left to do
                pass
        if self.lease is not None:
            # Our status keys and any slot vanish at once instead of after the TTL.
            self.lease.revoke()
        log.info("gantryd %s stopped; containers and proxy keep running", self.machine)

    def _ensure_lease(self) -> None:
        if self.lease is not None and self.lease.alive:
            return
        if self.lease is not None:
            log.warning("lease %x lost; taking a new one", self.lease.id)
            self.lease.abandon()
        self.lease = self.store.etcd.lease(self.lease_ttl)
        # Before anything is written or touched under the new lease: are we the only one?
        claim(self.store, self.components, self.machine, self.lease.id, self.claimant,
              self.lease_ttl)
        self.reported.clear()  # the status keys went with the old lease: write them again

    # -- reconcile -------------------------------------------------------------------------
    def _live(self, component: str) -> R.Live | None:
        current = self.lifecycle.current(component)
        if current is None:
            return None
        from gantry.canary import Canary
        canary = Canary(self.lifecycle).find(component)
        return R.Live(image=current.image, config_hash=current.config_hash,
                      origin=current.origin, running=current.state == "running",
                      canary=canary and R.Live(image=canary.image, origin=canary.origin,
                                               config_hash=canary.config_hash,
                                               percent=canary.canary))

    def _recover_once(self, desired: Desired | None, component: str) -> None:
        """After a (re)start, and whenever the component is not clean (one running, routed
        container): let gantry finish or clean up what a killed process left, re-route a
        container the engine restarted at a new address, remove stopped ones."""
        if desired is None or desired.component is None:
            return
        if component in self.recovered:
            containers = self.lifecycle.status(component)
            # Clean: one running, routed container, or that and its canary (a whole split).
            if sorted(c.state for c in containers) in ([], ["running"], ["canary", "running"]):
                return
        self._routes_touched = True
        self.lifecycle.recover(desired.model())
        self.recovered.add(component)

    def reconcile(self, component: str) -> None:
        self.queue.turn_begins(component)
        try:
            self._reconcile(component)
        finally:
            self.queue.turn_ends(component)  # not waiting for a slot any more: out of line

    def _reconcile(self, component: str) -> None:
        if component in self.outcomes:
            return  # its last outcome is not recorded yet
        desired = self.store.desired(component)
        if self._frozen(component, desired):
            return  # an operator works on this host by hand: no recover, update or slot
        self._recover_once(desired, component)
        live = self._live(component)
        decision = R.decide(desired, live, self.machine, self._canary_seen(component, live),
                            self.secrets.changed(component, desired, live))
        if decision.canary_revision is not None:
            self.canary[component] = decision.canary_revision
        revision = desired.revision if desired else 0
        why = self.health.due(component, desired,
                              ready=decision.action == R.IDLE and decision.status == "ready")
        if why is not None:  # unhealthy: replace it under a rollout slot (gantryd/health.py)
            assert desired is not None
            self._deploy(component, desired, live, remediation=why)
        elif decision.action == R.DEPLOY:
            assert desired is not None
            self._deploy(component, desired, live)
        elif decision.action in (R.STOP, R.KILL):
            assert desired is not None
            self.report(component, "stopping", revision, live, decision.reason)
            self._routes_touched = True
            self.lifecycle.stop(desired.model(), kill=decision.action == R.KILL)
            self.report(component, desired.status, revision, None)
        else:
            error = decision.reason if decision.action in (R.WAIT,) else None
            self.report(component, decision.status, revision, live, error)

    def _frozen(self, component: str, desired: Desired | None) -> bool:
        """Is this host frozen for `component` (gantryd/freeze.py)? Then only report it."""
        if freeze.read(self.store, component).of(self.machine) is None:
            return False
        self.health.due(component, desired, ready=False)  # no remediation either
        self.report(component, "frozen", desired.revision if desired else 0,
                    self._live(component))
        return True

    def _canary_seen(self, component: str, live: R.Live | None) -> int | None:
        """The desired revision current when the local canary was first seen (remembered
        across our restarts through our last status, while its lease lives)."""
        if live is None or not live.local:
            self.canary.pop(component, None)
            return None
        if component not in self.canary:
            try:
                previous = self.store.machine(component, self.machine)
            except StoreError:
                previous = None
            if previous is not None and previous.canary_revision is not None:
                self.canary[component] = previous.canary_revision
        return self.canary.get(component)

    def _deploy(self, component: str, desired: Desired, live: R.Live | None,
                remediation: str | None = None) -> None:
        """Pull, take a rollout slot, run the lifecycle. `remediation`: why the (unhealthy)
        live container is replaced by a new one of the same desired state."""
        assert desired.image is not None and self.lease is not None
        # Pull outside the switch slot (under a pull slot when rollout.maxParallelPulls
        # says so): switch slots are held only for the switch itself.
        try:
            if not self.pulls.pull(component, desired, self.lease.id, lambda status, note:
                                   self.report(component, status, desired.revision, live, note)):
                return  # waiting for a pull slot: its release (watch on pulls/) wakes us up
        except GantryError as exc:
            self._fail(component, desired, live, f"pull failed: {exc}")
            return
        except StoreError:
            self.wake.set()  # desired changed under us: decide again
            return
        if remediation is not None:
            log.warning("%s: %s; replacing it", component, remediation)
            self.report(component, "unhealthy", desired.revision, live, remediation)
        try:
            slot = self.store.acquire_slot(component, desired, self.machine, self.lease.id,
                                           detail=remediation and f"remediation: {remediation}")
        except StoreError:
            self.wake.set()  # desired changed under us: decide again
            return
        if slot is None:
            ahead, again = self.queue.join(component, self.lease.id, desired.max_parallel or 0)
            if again:
                self.wake.set()
            if remediation is None:
                self.report(component, "waiting", desired.revision, live,
                            "waiting for a rollout slot")
            log.debug("%s: still waiting for a rollout slot (%s ahead)", component,
                      "?" if ahead is None else ahead)
            return  # a slot's release (watch on lock/) wakes us up when we are in front
        self.queue.took_slot(component)
        log.info("%s: slot %d taken; %s %s", component, slot.index,
                 "replacing with" if remediation else "updating to", desired.image)
        self.report(component, "restarting" if remediation else "updating", desired.revision,
                    live)
        error = None
        proxy_before = self._current_proxy_pid()
        early: list[_Outcome] = []

        def drained() -> None:
            # The new container is live and routed, the old one drained: nothing left can fail
            # the rollout, so the slot goes now; docker stop + rm of the old one come after.
            self.outcomes[component] = _Outcome(slot, desired, None, remediation)
            early.append(self.outcomes[component])
            try:
                self._finish(component)
            except Exception as exc:  # etcd away: the loop records it once etcd answers
                log.warning("%s: recording the outcome failed (%s); retrying", component, exc)
                self.wake.set()
        try:
            # An update, or a canary step (which keeps the slot to its end).
            self._routes_touched = True
            done = split.apply(self.lifecycle, desired, live, on_drained=drained)
            if early:
                # The old containers and the images retention pruned went after the status
                # written at the release: look at what is retained again, and report it.
                self._kept.pop(component, None)
                self.wake.set()
            if early and done is not None and done.left:
                self._left_behind(component, desired, "could not stop/remove " + ", ".join(
                    i[:12] for i in done.left))
        except GantryError as exc:
            if early:  # after the release: the new version serves, nothing to undo or halt
                self._left_behind(component, desired, str(exc))
                return
            if self._proxy_died(exc, proxy_before):
                # Our own proxy went away under the update (the old container, still routed
                # in its restored state, keeps serving): not the new version's fault, so no
                # halt. Free the slot and try again once the proxy is back.
                log.warning("%s: the proxy died during the update (%s); retrying", component,
                            exc)
                self._repair()
                self.store.release_slot(slot, self.machine, "released",
                                        detail="proxy restarted; retrying")
                self.wake.set()
                return
            error = str(exc)
            log.error("%s: update failed: %s", component, error)
        if early:
            return  # recorded and released when the old container was drained
        self.outcomes[component] = _Outcome(slot, desired, error, remediation)
        self._finish(component)

    def _left_behind(self, component: str, desired: Desired, error: str) -> None:
        """Retiring the old container failed after our slot was released: log it and record
        it (event `retire-failed`); the next turn's recover() tries again."""
        log.error("%s: after the slot was released: %s", component, error)
        try:
            self.store.record(component, Event("retire-failed", self.machine, desired.revision,
                                               detail=error, at=now_iso()))
        except Exception as exc:  # etcd away: the log line stays
            log.warning("%s: could not record the retire failure: %s", component, exc)
        self.wake.set()

    def _proxy_died(self, exc: GantryError, pid_before: int | None) -> bool:
        """Did `exc` come from the local proxy dying (not answering, or restarted since)?"""
        cause = getattr(exc, "cause", exc)
        if not isinstance(cause, RouteError) or self.proxy_pid is None:
            return False
        pid_now = self._current_proxy_pid()
        return pid_now is None or pid_now != pid_before

    def _fail(self, component: str, desired: Desired, live: R.Live | None, error: str) -> None:
        log.error("%s: %s", component, error)
        done = revisions.fail(self.store, component, desired, self.machine, error)
        if done is not None:  # halted, or halted and reverted (rollout.onFailure)
            log.warning("%s: rollout of revision %d %s fleet-wide", component,
                        desired.revision, done)
        self.report(component, "failed", desired.revision, live, error)

    def _finish(self, component: str) -> None:
        """Record a lifecycle outcome in etcd: halt on failure, status, free the slot."""
        outcome = self.outcomes.get(component)
        if outcome is None:
            return
        live = self._live(component)
        if outcome.error is not None and outcome.remediation is not None:
            # The replacement failed; the old container keeps serving. Not a rollout: no halt.
            self.report(component, "unhealthy", outcome.desired.revision, live,
                        f"replacement failed: {outcome.error}")
        elif outcome.error is not None:
            self._fail(component, outcome.desired, live, outcome.error)
        else:
            self.secrets.deployed(component, outcome.desired.revision)
            self.report(component, R.settled(outcome.desired), outcome.desired.revision, live)
        kept = self.store.release_slot(outcome.slot, self.machine,
                                       "failed" if outcome.error else "released",
                                       detail=outcome.error or (outcome.remediation
                                                                and "remediated"))
        if outcome.remediation is not None:
            self.health.reset(component)  # count healthFailures afresh before another try
        if not kept:
            log.warning("%s: our rollout slot had expired before we released it", component)
        else:
            log.info("%s: slot %d released", component, outcome.slot.index)
        del self.outcomes[component]
        self.wake.set()  # look again: the desired state may have moved on meanwhile

    # -- status ----------------------------------------------------------------------------
    def report(self, component: str, status: str, revision: int, live: R.Live | None,
               error: str | None = None) -> None:
        """Write our status for `component` (on our lease) when it changed."""
        assert self.lease is not None
        new = MachineStatus(machine=self.machine, status=status, revision=revision,
                            image=live.image if live else None,
                            config_hash=live.config_hash if live else None,
                            split_percent=live.canary.percent if live and live.canary else None,
                            split_image=live.canary.image if live and live.canary else None,
                            error=error, canary_revision=self.canary.get(component),
                            traffic=self.traffic.states.get(component, ()),
                            retained=self._retained(component, live))
        old = self.reported.get(component)
        if old is not None and replace(old, since="") == new:
            return
        new = replace(new, since=now_iso() if old is None or old.status != status
                      else old.since)
        self.store.put_machine(component, new, self.lease.id)
        self.endpoints.publish(component, new, live, self.lease.id)
        if old is None or old.status != status:
            log.info("%s: %s%s", component, status, f" ({error})" if error else "")
        if status in SETTLED and (old is None or (old.status, old.revision) != (status, revision)):
            revisions.mark_done(self.store, component, revision)  # the last host in marks it
        self.reported[component] = new

    def _retained(self, component: str, live: R.Live | None) -> tuple[str, ...]:
        """Images kept here for a rollback (the live container's record: looked up again
        only when the live container changes)."""
        key = (live.image, live.config_hash) if live else None
        cached = self._kept.get(component)
        if cached is None or cached[0] != key:
            try:
                cached = self._kept[component] = (key, retention.retained(self.lifecycle,
                                                                          component))
            except GantryError:  # Docker or the proxy away: the next report says it
                return cached[1] if cached else ()
        return cached[1]


def _log_reporter():
    from gantry.progress import Reporter
    return Reporter()  # lifecycle steps go to the "gantry.progress" logger


def run(store: Store, components: Sequence[str], machine: str, proxy_socket: str | None = None,
        proxy_bind: str | None = None, proxy_state: str | None = None, lease_ttl: int = 15,
        docker_url: str | None = None, advertise: str | None = None) -> int:
    """Entry point of `gantryd run`: build the host's lifecycle, run until SIGTERM/SIGINT.
    `advertise`: the address published with our endpoints (already checked)."""
    from gantry.lifecycle import Host, Lifecycle
    from gantry.runtime import connect as docker_connect
    from proxy.client import ProxyClient, ensure_running

    try:
        config = store.config()
    except (E.EtcdError, StoreError):
        config = None  # etcd is down or the config unreadable: the loop will say so
    if config is not None:  # catch typos early; a component may also be added later
        unknown = [c for c in components if c not in config.names]
        if unknown:
            log.warning("components %s are not in the stored config (yet)", ", ".join(unknown))
    # Refuse before anything starts (the proxy included) when the name is someone else's.
    me = Claimant.me()
    lease = claim_at_start(store, components, machine, lease_ttl, me)
    from gantry import simulated
    sim = simulated.from_env()  # no Docker: scripts/bench/fleet --light only
    docker_client = sim.client if sim is not None else docker_connect(docker_url)
    proxy_client = ensure_running(proxy_socket, proxy_state)
    host = Host(docker_client, proxy_client, store.project, machine,
                proxy_bind=proxy_bind or "0.0.0.0", origin="gantryd", reporter=_log_reporter(),
                runtime=sim)
    daemon = Daemon(store, components, machine, Lifecycle(host), lease_ttl=lease_ttl,
                    repair=lambda: ensure_running(proxy_socket, proxy_state),
                    proxy_pid=lambda: ProxyClient(proxy_socket, timeout=5).ping()["pid"],
                    advertise=advertise, lease=lease, claimant=me)
    _on_signals(daemon.stop)
    daemon.run()
    return 0


def _wait_exit(pid: int, stopping: threading.Event, slice_: float = 1.0,
               idle_slice: float = RESYNC_INTERVAL) -> bool:
    """Block until process `pid` exits (True) or `stopping` is set (False). With a pidfd the
    exit wakes us at once, so `stopping` is looked at only every `idle_slice` (no idle
    wake-ups); without one, the process is looked at every `slice_`."""
    import os
    import select
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel): look again every slice
        while not stopping.wait(slice_):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        return False
    try:
        while not stopping.is_set():
            if select.select([fd], [], [], idle_slice)[0]:
                return True
        return False
    finally:
        os.close(fd)


def _on_signals(handler: Callable[[], None]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals are only delivered to the main thread
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: handler())
