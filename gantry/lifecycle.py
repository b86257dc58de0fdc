"""The component lifecycle on one host: update, start, stop/kill, status, recover, monitor.

Library API (used by the ``gantry`` CLI and by gantryd)::

    from gantry.lifecycle import Host, Lifecycle
    host = Host(docker_client, proxy_client, project="shop", machine="web-1",
                proxy_bind="0.0.0.0", origin="gantryd", reporter=my_reporter)
    life = Lifecycle(host)
    deployment = life.update(component)              # resolve repo:tag, roll out
    deployment = life.update(component, image="repo@sha256:...")   # a pinned image
    life.start(component)       # like update, but a no-op when already live with same image+hash
    life.stop(component)        # drain, stop and remove every container, remove the routes
    life.stop(component, kill=True)                  # the same without waiting for the drain
    life.status("web") -> list[ContainerStatus]      # every container of the component
    life.current(component) -> ContainerStatus | None   # the routed, live one (image, hash, origin)
    life.recover(component)     # clean up after a crashed gantry (run by every command anyway)
    life.resolve(component, allow_local=False) -> "repo@sha256:..."   # pin a tag (registry)
    life.monitor(component, stop_event)   # health checks; replace after N consecutive failures

Every mutating call runs under the local component lock (:mod:`gantry.lock`) and starts with
:meth:`Lifecycle.recover`, which rebuilds the state from Docker labels and the proxy's routes
alone, so any gantry process may be killed at any moment:

* a stopped container of the component is removed;
* a running container that is the backend of a route is live (the newest one if several, after
  a crash mid-switch; the other routes are switched to it);
* a running container labelled ``io.gantry.canary`` that is an active, non-primary backend of
  every route is the canary of a weighted split (:mod:`gantry.canary`): it is kept, the split
  is never "finished" by removing one side. A split on some routes only (a canary start or
  abort killed between two route changes) is resolved to the primary alone;
* a running container newer than the live one that the proxy has never seen was a new
  container of an interrupted update: it is removed;
* any other running container is old: it is drained, stopped and removed.

Failures raise :class:`~gantry.errors.UpdateFailed` (``.cause`` holds the original
GantryError) with the previous container still live and routed and the new one removed.
"""
from __future__ import annotations

import http.client
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


from . import checks as C
from . import health as H
from . import labels as L
from . import build, retention, secret_env
from .bake import Bake
from .errors import Cancelled, CheckFailed, GantryError, ImageError, RouteError, UpdateFailed
from .lock import ComponentLock
from .progress import Reporter
from .engine import Engine
from .runtime import ContainerInfo, Runtime, registry_refused
from .traffic import describe as describe_traffic

log = logging.getLogger(__name__)

# How long one proxy drain call may block, so progress (live count) is reported this often.
DRAIN_SLICE = 1.0

# Where `stop` points a route while its containers drain: nothing listens on the discard port,
# so the proxy turns new connections away while it keeps counting the live ones.
PARK_BACKEND = "127.0.0.1:9"

STATES = ("running", "canary", "draining", "starting", "stopped")

# Given to a container once it is live (never during its ready checks, so a crashing new
# version is not restarted in a loop): the engine brings it back after a restart of its own
# (or of the machine); recover() then points the routes at its new address.
RESTART_POLICY = "unless-stopped"


@dataclass(frozen=True)
class ContainerStatus:
    """One container of a component as gantry sees it (Docker labels + proxy routes)."""

    id: str
    name: str
    component: str
    image: str  # the digest-pinned reference it was created from (label)
    config_hash: str
    origin: str
    machine: str
    created: str
    started_at: str
    state: str  # one of STATES
    live: int = 0  # live connections through the proxy, all routes
    routed: bool = False
    docker_status: str = ""
    backends: tuple[str, ...] = ()  # proxy backend addresses of this container
    canary: int | None = None  # state canary: its percentage of new connections
    traffic: str = ""  # the routes' pause/maintenance note (gantry.traffic.describe)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def display_state(self) -> str:
        if self.state == "draining":
            return f"draining ({self.live} connection{'s' if self.live != 1 else ''})"
        if self.state == "canary":
            return f"canary {self.canary}%"
        if self.state == "running" and self.traffic:
            return f"running ({self.traffic})"
        return self.state

    def uptime(self, now: datetime | None = None) -> float | None:
        """Seconds since the container started; None unless running."""
        if self.state == "stopped" or not self.started_at:
            return None
        started = _parse_time(self.started_at)
        if started is None:
            return None
        return max(0.0, ((now or datetime.now(timezone.utc)) - started).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "component": self.component, "image": self.image,
            "configHash": self.config_hash, "origin": self.origin, "machine": self.machine,
            "created": self.created, "startedAt": self.started_at, "state": self.state,
            "display": self.display_state, "live": self.live, "routed": self.routed,
            "uptime": self.uptime(), "backends": list(self.backends), "traffic": self.traffic,
            "canary": self.canary,
        }


@dataclass(frozen=True)
class Deployment:
    """The outcome of update/start."""

    component: str
    container: ContainerStatus
    image: str
    changed: bool = True  # False when start() found the component already up to date
    replaced: tuple[str, ...] = ()  # ids of containers drained and removed
    elapsed: float = 0.0
    left: tuple[str, ...] = ()  # ids of replaced containers that could not be stopped/removed


def _parse_time(text: str) -> datetime | None:
    """Docker's RFC 3339 timestamps with nanoseconds -> aware datetime."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    try:
        t = datetime.fromisoformat(head + (f".{frac}" if frac else ""))
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc)


class Host:
    """Everything the lifecycle acts on, on one machine.

    ``proxy_client``: a ``proxy.client.ProxyClient``. ``origin``: ``gantry``, ``gantryd`` or
    ``watch`` (label of created containers). ``backend_mode``: see :mod:`gantry.runtime`.
    ``lock_wait``: True waits for a busy component, False raises LockBusy, a number waits at
    most that long. ``source``: the spec file of the project (``gantry watch``), as a label.
    """

    def __init__(
        self,
        docker_client: Engine,
        proxy_client: Any,
        project: str,
        machine: str,
        proxy_bind: str = "0.0.0.0",
        origin: str = "gantry",
        reporter: Reporter | None = None,
        backend_mode: str = "loopback",
        lock_dir: Path | None = None,
        lock_wait: bool | float = True,
        source: str = "",
        runtime: Runtime | None = None,
    ) -> None:
        if origin not in L.ORIGINS:
            raise ValueError(f"origin must be one of {L.ORIGINS}")
        # ``runtime``: a stand-in for Docker (gantry.simulated, fleet benchmarks only).
        self.runtime = runtime or Runtime(docker_client, backend_mode)
        self.proxy = proxy_client
        self.project = project
        self.machine = machine
        self.proxy_bind = proxy_bind
        self.origin = origin
        self.reporter = reporter or Reporter()
        self.lock_dir = lock_dir
        self.lock_wait = lock_wait
        self.source = source

    def route_name(self, component: str, external: int) -> str:
        return f"{self.project}.{component}.{external}"

    def listen(self, external: int) -> str:
        host = f"[{self.proxy_bind}]" if ":" in self.proxy_bind else self.proxy_bind
        return f"{host}:{external}"


def _name_of(component: Any) -> str:
    return component if isinstance(component, str) else component.name


class _View:
    """A snapshot of one component: its containers and its proxy routes, cross-referenced."""

    def __init__(self, host: Host, containers: list[ContainerInfo], routes: list[dict]) -> None:
        self.host = host
        self.containers = containers  # oldest first
        self.routes = routes

    def _matches(self, info: ContainerInfo, address: str | None) -> bool:
        if not address or not info.running:
            return False
        rt = self.host.runtime
        if rt.backend_mode == "container-ip":
            return bool(info.ip) and address.rsplit(":", 1)[0].strip("[]") == info.ip
        return address in {f"127.0.0.1:{p}" for p in info.ports.values()}

    def routed(self, info: ContainerInfo) -> bool:
        return any(self._matches(info, r.get("backend")) for r in self.routes)

    def pairs(self, info: ContainerInfo) -> list[tuple[str, str]]:
        """(route name, backend address) of every route that knows this container."""
        out = []
        for r in self.routes:
            addresses = {b.get("address") for b in r.get("backends") or ()} | {r.get("backend")}
            out += [(r["name"], a) for a in sorted(a for a in addresses if self._matches(info, a))]
        return out

    def live_connections(self, info: ContainerInfo) -> int:
        return sum(b.get("live", 0) for r in self.routes for b in r.get("backends") or ()
                   if self._matches(info, b.get("address")))

    def seen_by_proxy(self, info: ContainerInfo) -> bool:
        return bool(self.pairs(info))

    def live(self) -> ContainerInfo | None:
        """The newest running container that is a route's active backend."""
        routed = [c for c in self.containers if c.running and self.routed(c)]
        return routed[-1] if routed else None

    def canary(self) -> ContainerInfo | None:
        """The canary of a weighted split: the newest running container labelled as one that
        is an active, non-primary backend of every route (a partial split is none)."""
        for info in reversed(self.containers):
            if info.running and info.labels.canary and self.routes and all(
                    any(self._matches(info, a) for a, _ in active_backends(r)[1:])
                    for r in self.routes):
                return info
        return None

    def share(self, info: ContainerInfo) -> int | None:
        """The percentage of new connections ``info`` gets (first route by name)."""
        for route in sorted(self.routes, key=lambda r: r["name"]):
            active = active_backends(route)
            for address, weight in active:
                if self._matches(info, address):
                    return round(100 * weight / sum(w for _, w in active))
        return None

    def status(self, info: ContainerInfo) -> ContainerStatus:
        live, canary = self.live(), self.canary()
        if not info.running:
            state = "stopped"
        elif self.routed(info):
            state = "running"
        elif canary is not None and info.id == canary.id:
            state = "canary"
        elif self.live_connections(info) or (live is not None and info.created < live.created):
            state = "draining"
        else:
            # Not routed, no connections, newer than the live one: a new container during
            # its ready checks (or left behind by a killed update, until recover removes it).
            state = "starting"
        return ContainerStatus(
            id=info.id, name=info.name, component=info.labels.component, image=info.labels.image,
            config_hash=info.labels.config_hash, origin=info.labels.origin,
            machine=info.labels.machine, created=info.created, started_at=info.started_at,
            state=state, live=self.live_connections(info), routed=self.routed(info),
            docker_status=info.status, backends=tuple(a for _, a in self.pairs(info)),
            canary=self.share(info) if state == "canary" else None,
            traffic=describe_traffic(self.routes) if state == "running" else "",
        )


class Lifecycle:
    """The lifecycle operations for the components of one project on one host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.runtime = host.runtime
        self.proxy = host.proxy
        self.reporter = host.reporter

    # -- views ----------------------------------------------------------------------------
    def _routes(self, component: str | None = None) -> list[dict]:
        """The proxy routes of this project (or of one component)."""
        prefix = f"{self.host.project}." + (f"{component}." if component else "")
        try:
            routes = self.proxy.routes()
        except Exception as exc:
            raise RouteError(f"cannot list the proxy routes: {exc}") from exc
        if isinstance(routes, dict):
            routes = routes.get("routes", [])
        out = []
        for r in routes:
            name = r.get("name", "")
            rest = name[len(prefix):]
            # <project>.<component>.<external>: the last part must be the port number.
            if name.startswith(prefix) and rest.rpartition(".")[2].isdigit() \
                    and (component is None or "." not in rest):
                out.append(r)
        return out

    def routes(self, component: Any) -> list[dict]:
        """The proxy routes of one component (``<project>.<component>.<port>``)."""
        return self._routes(_name_of(component))

    def _view(self, component: str) -> _View:
        sel = L.selector(self.host.project, self.host.machine, component)
        return _View(self.host, self.runtime.list(sel), self._routes(component))

    def status(self, component: Any) -> list[ContainerStatus]:
        """Every container of the component on this machine, oldest first."""
        view = self._view(_name_of(component))
        return [view.status(c) for c in view.containers]

    def status_all(self) -> dict[str, list[ContainerStatus]]:
        """Every component of the project on this machine that has containers."""
        sel = L.selector(self.host.project, self.host.machine)
        names = sorted({c.labels.component for c in self.runtime.list(sel)})
        return {name: self.status(name) for name in names}

    def current(self, component: Any) -> ContainerStatus | None:
        """The live (routed) container, with its labels; None when there is none."""
        view = self._view(_name_of(component))
        live = view.live()
        return view.status(live) if live else None

    # -- locking --------------------------------------------------------------------------
    def lock(self, component: Any) -> ComponentLock:
        return ComponentLock(
            self.host.project, _name_of(component), lock_dir=self.host.lock_dir,
            wait=self.host.lock_wait, on_wait=self.reporter.waiting,
            holder=f"pid {os.getpid()} ({self.host.origin})",
        )

    # -- update / start -------------------------------------------------------------------
    def update(self, component: Any, image: str | None = None,
               cancel: threading.Event | None = None,
               on_drained: Callable[[], None] | None = None) -> Deployment:
        """Roll out a new container of ``component`` (start-first, checked, drained).

        ``image``: a digest-pinned reference to run instead of resolving ``repo:tag``.
        A component with ``build`` is built instead (:mod:`gantry.build`); as its image is
        named by content, an unchanged context then redeploys nothing (like :meth:`start`).
        ``cancel``: once set, the update is given up at its next step before the switch (the
        new container goes; Cancelled rises); after the switch it runs to the end.
        ``on_drained``: called once the new container is live and the old ones are drained,
        before they are stopped and removed (gantryd frees its rollout slot there); not
        called when the update fails or changes nothing.
        Raises UpdateFailed with the previous container still serving.
        """
        with self.lock(component):
            self._recover(component)
            if image is None and component.build is not None:
                return self._start(component, None, cancel)
            return self._deploy(component, image, cancel, on_drained)

    def start(self, component: Any, image: str | None = None) -> Deployment:
        """Like update, but a no-op when the live container already runs the same image and
        config hash (its routes are repaired if needed)."""
        with self.lock(component):
            self._recover(component)
            return self._start(component, image)

    def _start(self, component: Any, image: str | None,
               cancel: threading.Event | None = None) -> Deployment:
        started = time.monotonic()
        current = self.current(component)
        if current is not None or component.build is not None:
            image = image or self._image(component, cancel)
        if current is not None and self._runs(current, image, component):
            self._ensure_routes(component, current.id)
            self.reporter.step(f"{component.name}: {current.short_id} already runs "
                               f"{image}; nothing to do")
            return Deployment(component.name, current, image, changed=False,
                              elapsed=time.monotonic() - started)
        return self._deploy(component, image, cancel)

    def _image(self, component: Any, cancel: threading.Event | None = None) -> str:
        """The image to roll out: the build of the context, or ``repo:tag`` resolved."""
        if component.build is not None:
            return self._wrap(lambda: build.image(self, component, cancel), component)
        return self._wrap(lambda: self.resolve(component), component)

    def _runs(self, current: ContainerStatus, ref: str, component: Any) -> bool:
        """Does ``current`` run ``ref`` with the component's config? The image ids must match
        too: a tag (a build's) may have been moved since."""
        if current.image != ref or current.config_hash != component.spec_hash():
            return False
        info, image_id = self.runtime.inspect(current.id), self.runtime.image_id(ref)
        if info is not None and secret_env.changed(component, info.labels.secrets,
                                                   self.host.origin):
            self.reporter.step(f"{component.name}: a valueFrom value changed on this host "
                               "(or cannot be read)")
            return False
        return info is None or image_id is None or info.image_id == image_id

    def _wrap(self, fn: Any, component: Any) -> Any:
        try:
            return fn()
        except GantryError as exc:
            raise self._failed(component, exc) from exc

    def _failed(self, component: Any, cause: GantryError) -> UpdateFailed:
        try:
            current = self.current(component)
        except GantryError:  # Docker or the proxy is gone too: say nothing we cannot check
            current = None
        keep = (f"; {current.short_id} keeps serving" if current else "")
        # A container's last output or a Docker error may quote its environment.
        err = UpdateFailed(secret_env.redact(f"{component.name}: {cause}{keep}", component,
                                             self.host.origin))
        err.cause = cause  # type: ignore[attr-defined]
        return err

    def resolve(self, component: Any, allow_local: bool = True) -> str:
        """``repo:tag`` -> ``repo@sha256:..`` via the registry (ImageError if it cannot).

        With ``allow_local``, an unreachable registry falls back (with a warning) to the local
        image ``repo:tag``: its repo digest, else its image id. Only a repo digest can be pulled
        by other hosts, so gantryd reports the warning to the operator who ran the update.
        """
        try:
            return self.runtime.resolve(component.repo, component.tag)
        except ImageError as registry_error:
            local = self._local_ref(component) if allow_local else None
            # The registry answered (no such tag, or not for us): not a reason to fall back.
            if local is None or "not found" in str(registry_error).lower() \
                    or registry_refused(str(registry_error)):
                raise
            self.reporter.warning(f"{registry_error}; using the local image {local}")
            return local

    def _local_ref(self, component: Any) -> str | None:
        """A pinned reference to the local image ``repo:tag``, if there is one."""
        try:
            image = self.runtime.inspect_image(component.image)
        except GantryError:
            return None
        if image is None:
            return None
        for digest_ref in image.get("RepoDigests") or ():
            if digest_ref.startswith(component.repo + "@"):
                return digest_ref
        return image["Id"]

    def _deploy(self, component: Any, image: str | None,
                cancel: threading.Event | None = None,
                on_drained: Callable[[], None] | None = None) -> Deployment:
        started = time.monotonic()
        ref = self._pull(component, image)
        bake = Bake.begin(self, component)  # what to go back to (None: no bake)
        info = self._start_new(component, ref, lambda new: self._switch_routes(component,
                                                                               (new, 1)),
                               cancel=cancel)
        if bake is not None:
            bake.hold(info)  # UpdateFailed: routes back on the old container, the new gone
        replaced, left = self._retire_others(component, keep=info.id, on_drained=on_drained)
        live = self.current(component)
        assert live is not None
        elapsed = time.monotonic() - started
        self.reporter.step(f"{component.name}: {live.short_id} is live ({ref}); "
                           f"done in {elapsed:.1f}s")
        return Deployment(component.name, live, ref, changed=True, replaced=tuple(replaced),
                          elapsed=elapsed, left=tuple(left))

    def _pull(self, component: Any, image: str | None) -> str:
        """Resolve ``repo:tag`` (unless ``image`` is given) and pull; answers the pinned ref."""
        rep, name = self.reporter, component.name
        rep.step(f"{name}: update starts" + (
            f" to {image}" if image else ", building" if component.build is not None
            else f", resolving {component.image}"))
        ref = image or self._image(component)
        try:
            pulled = self._wrap(lambda: self.runtime.ensure_image(
                ref, lambda event: rep.pull_progress(name, ref, event)), component)
        finally:
            rep.pull_progress(name, ref, None)  # ended: a line redrawn in place goes
        if pulled:
            rep.step(f"{name}: pulled {ref}")
        else:
            rep.step(f"{name}: image {ref} is present")
        return ref

    def _start_new(self, component: Any, ref: str, route: Callable[[ContainerInfo], None],
                   canary: str = "", cancel: threading.Event | None = None) -> ContainerInfo:
        """Start a new container of ``ref`` beside the live one, wait for its ready checks,
        then ``route(info)`` puts it in the proxy and (unless a canary) the restart policy.

        On any failure the new container goes, the routes stay as they were and (for a
        GantryError) UpdateFailed rises. ``canary``: the io.gantry.canary label. ``cancel``
        set before ``route``: the same, and Cancelled rises.
        """
        rep, rt, name = self.reporter, self.runtime, component.name
        new_id: str | None = None
        try:
            _go_on(cancel, name)
            new_id = self._create(component, ref, canary)
            rep.step(f"{name}: started {new_id[:12]}; waiting for ready checks "
                     f"(up to {component.ready_timeout:g}s)")
            C.wait_for_checks(component.ready_checks, rt, new_id, component.ready_timeout, rep,
                              cancel=cancel)
            rep.step(f"{name}: {new_id[:12]} is ready")
            info = rt.inspect(new_id)
            if info is None:
                raise CheckFailed(f"container {new_id[:12]} disappeared")
            _go_on(cancel, name)  # the last point an update can be given up at
            route(info)
        except BaseException as exc:
            # Whatever happened (check failure, Docker error, Ctrl-C), the new container goes
            # and the old one, still routed, keeps serving.
            if new_id is not None:
                self._discard(new_id)
            if isinstance(exc, GantryError):
                raise self._failed(component, exc) from exc
            raise
        # Routed now: an interrupt from here on leaves it live (never removed while it serves).
        if not canary:  # a canary gets it when promoted: an engine restart ends a canary
            self._keep_up(info.id)
        return info

    def _create(self, component: Any, ref: str, canary: str = "") -> str:
        rt = self.runtime
        # Read here, on this host, at creation: a missing secret fails before any container.
        env = secret_env.resolve(component, self.host.origin)
        labels = L.GantryLabels(
            project=self.host.project, component=component.name, machine=self.host.machine,
            config_hash=component.spec_hash(), image=ref, origin=self.host.origin,
            canary=canary, images=retention.label_for(self, component, ref),
            spec=L.spec_digest(component), source=self.host.source, secrets=env.label(),
        ).to_dict()
        cname = f"{self.host.project}.{component.name}.{secrets.token_hex(4)}"
        try:
            container_id = rt.create(
                cname, ref, labels,
                command=component.command,
                user=component.user,
                environment=env.env,
                binds={b.host: {"bind": b.container, "mode": "ro" if b.read_only else "rw"}
                       for b in component.bindings},
                volumes_from=component.volumes_from,
                privileged=component.privileged,
                tcp_ports=_probed_ports(component),
            )
        except (KeyboardInterrupt, SystemExit):
            # Interrupted while Docker may already have created it: it has our name.
            self._discard(cname)
            raise
        try:
            rt.start(container_id)
        except BaseException:
            self._discard(container_id)
            raise
        return container_id

    def _keep_up(self, container_id: str) -> None:
        try:
            self.runtime.set_restart_policy(container_id, RESTART_POLICY)
        except GantryError as exc:  # it serves all the same; only an engine restart stops it
            self.reporter.warning(f"could not set the restart policy of {container_id[:12]}: "
                                  f"{exc}")

    def _discard(self, container_id: str) -> None:
        """Remove a container that never served (no drain); never raises."""
        try:
            self.runtime.remove(container_id)
            self.reporter.step(f"removed {container_id[:12]}")
        except GantryError as exc:
            self.reporter.warning(f"could not remove {container_id[:12]}: {exc} "
                                  f"(the next gantry command removes it)")

    # -- routes ---------------------------------------------------------------------------
    def _set_route(self, name: str, listen: str, backend: str | Sequence[tuple[str, int]],
                   kind: str, idle_timeout: float | None) -> dict:
        """Create or switch one route to ``backend``: an address, or (address, weight) pairs
        to split new connections over (the first is the primary)."""
        try:
            answer = self.proxy.set_route(name, listen=listen, kind=kind,
                                          idle_timeout=idle_timeout, **_target(backend))
        except Exception as exc:
            raise RouteError(f"proxy refused route {name} -> {_describe(backend)}: "
                             f"{exc}") from exc
        route = (answer or {}).get("route") or {}
        if route.get("state") == "error":
            raise RouteError(f"proxy cannot listen on {listen} for {name}: {route.get('error')}")
        return answer or {}

    def _switch_routes(self, component: Any, *sides: tuple[ContainerInfo, int]) -> None:
        """Point every port's route at the (container, weight) ``sides``: one side gets every
        new connection, several split them by weight (the first is the primary). All or
        nothing (rolled back on failure)."""
        before = {r["name"]: r for r in self._routes(component.name)}
        done: list[str] = []
        try:
            for port in component.ports:
                name = self.host.route_name(component.name, port.external)
                backends = []
                for info, weight in sides:
                    backend = self.runtime.backend(info, port.container)
                    if backend is None:
                        raise RouteError(f"container port {port.container} of "
                                         f"{info.short_id} is not reachable")
                    backends.append((backend, weight))
                self._set_route(name, self.host.listen(port.external), backends, port.kind,
                                component.drain_idle_timeout)
                done.append(name)
                self.reporter.step(f"{component.name}: route {name} "
                                   f"{self.host.listen(port.external)} -> {_describe(backends)}")
        except BaseException:
            self._restore_routes(done, before)
            raise

    def _restore_routes(self, names: list[str], before: dict[str, dict]) -> None:
        for name in reversed(names):
            old = before.get(name)
            try:
                if old is None:
                    self.proxy.remove_route(name)
                else:
                    self.proxy.set_route(name, listen=old["listen"], kind=old.get("kind", "tcp"),
                                         idle_timeout=old.get("idleTimeout"),
                                         **_target(active_backends(old)))
            except Exception as exc:
                self.reporter.warning(f"could not restore route {name}: {exc}")

    def _ensure_routes(self, component: Any, container_id: str) -> None:
        """Make every port of ``component`` route to the given (live) container, alone or in
        a split with the component's canary (any other active backend is dropped)."""
        info = self.runtime.inspect(container_id)
        if info is None or not info.running:
            return
        view = self._view(component.name)
        canary = view.canary()
        routes = {r["name"]: r for r in view.routes}
        for port in component.ports:
            name = self.host.route_name(component.name, port.external)
            backend = self.runtime.backend(info, port.container)
            route = routes.get(name)
            if backend is None or (route and route.get("backend") == backend
                                   and route.get("state") != "error"
                                   and all(canary is not None and view._matches(canary, a)
                                           for a, _ in active_backends(route)[1:])):
                continue
            self._set_route(name, self.host.listen(port.external), backend, port.kind,
                            component.drain_idle_timeout)
            self.reporter.step(f"{component.name}: route {name} repaired -> {backend}")

    # -- retiring old containers ----------------------------------------------------------
    def _retire_others(self, component: Any, keep: str | None,
                       on_drained: Callable[[], None] | None = None
                       ) -> tuple[list[str], list[str]]:
        """Drain every container but ``keep``, call ``on_drained``, then stop and remove
        them: (ids retired, ids left behind by an error, for the next recover())."""
        view = self._view(component.name)
        old = [info for info in view.containers if info.id != keep]
        # All drained before any is stopped: the engine's slow part (docker stop + rm) comes
        # after on_drained. Nothing routes to them any more (switched before the drain).
        drained = [info for info in old if self._quiesce(component, info, view, drain=True)]
        if on_drained is not None:
            on_drained()
        left = [info.id for info in old
                if info not in drained or not self._dispose(component, info)]
        retention.prune(self, component)  # their images are free now: keep the last N
        return [info.id for info in old], left

    def _retire(self, component: Any, info: ContainerInfo, view: _View, drain: bool) -> None:
        """Drain (optionally), stop and remove one container. Errors become warnings: the
        container then stays for the next command's recover() to finish."""
        if self._quiesce(component, info, view, drain):
            self._dispose(component, info)

    def _quiesce(self, component: Any, info: ContainerInfo, view: _View, drain: bool) -> bool:
        """Drain ``info`` (bounded by the drain timeout), or close its connections at once;
        False (warned) when that failed: it must not be stopped yet."""
        rep = self.reporter
        try:
            if info.running and drain:
                deadline = time.monotonic() + component.drain_timeout
                rep.step(f"{component.name}: draining {info.short_id} "
                         f"(up to {component.drain_timeout:g}s)")
                self._signal(component, info)
                self._drain(component, info, view.pairs(info), deadline)
                if component.termination_checks:
                    self._termination_checks(component, info, deadline)
            elif info.running:
                self._close(view.pairs(info))
            return True
        except GantryError as exc:
            rep.warning(f"could not retire {info.short_id}: {exc} (the next gantry command "
                        "retries)")
            return False

    def _dispose(self, component: Any, info: ContainerInfo) -> bool:
        """Stop and remove ``info``; False (warned) when the engine failed."""
        try:
            if info.running:
                self.runtime.stop(info.id, component.stop_timeout)
            self.runtime.remove(info.id)
            self.reporter.step(f"{component.name}: stopped and removed {info.short_id}")
            return True
        except GantryError as exc:
            self.reporter.warning(f"could not retire {info.short_id}: {exc} (the next gantry "
                                  "command retries)")
            return False

    def _signal(self, component: Any, info: ContainerInfo) -> None:
        for sig in component.termination_signals:
            try:
                if sig.kind == "exec":
                    code = self.runtime.exec(info.id, list(sig.command), sig.timeout)
                    what = f"exec {' '.join(sig.command)}"
                    outcome = "timed out" if code is None else f"exit code {code}"
                else:
                    what = f"POST :{sig.port}{sig.path}"
                    outcome = _post(self.runtime.address(info, sig.port), sig.path, sig.timeout)
                self.reporter.step(f"{component.name}: termination signal {what} to "
                                   f"{info.short_id}: {outcome}")
            except GantryError as exc:
                self.reporter.warning(f"termination signal to {info.short_id} failed: {exc}")

    def _drain(self, component: Any, info: ContainerInfo, pairs: list[tuple[str, str]],
               deadline: float) -> None:
        """Wait until the proxy counts no live connection to ``info`` (bounded by the
        deadline), reporting the live count; then close whatever is left."""
        pending = dict.fromkeys(pairs, 0)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for pair in list(pending):
                result = self._proxy_drain(pair, min(DRAIN_SLICE, max(remaining, 0)), False)
                if result.get("drained", True):
                    del pending[pair]
                else:
                    pending[pair] = int(result.get("live", 0))
            if pending:
                self.reporter.draining(info.id, sum(pending.values()),
                                       max(0.0, deadline - time.monotonic()))
        if pending:
            closed = self._close(list(pending))
            self.reporter.step(f"{component.name}: drain timeout; closed {closed} "
                               f"connection(s) to {info.short_id}")

    def _close(self, pairs: Iterable[tuple[str, str]]) -> int:
        return sum(int(self._proxy_drain(p, 0, True).get("closed", 0)) for p in pairs)

    def _proxy_drain(self, pair: tuple[str, str], timeout: float, close: bool) -> dict:
        name, backend = pair
        try:
            return self.proxy.drain(name, backend, timeout=timeout, close=close) or {}
        except Exception as exc:
            if _is_not_found(exc):
                return {"drained": True, "live": 0, "closed": 0}  # route gone: nothing to wait
            raise RouteError(f"proxy drain of {backend} on {name}: {exc}") from exc

    def _termination_checks(self, component: Any, info: ContainerInfo, deadline: float) -> None:
        try:
            C.wait_for_checks(component.termination_checks, self.runtime, info.id,
                              max(0.0, deadline - time.monotonic()), self.reporter,
                              what="termination")
        except CheckFailed as exc:
            # An exited container is as terminated as it gets; otherwise stop it anyway.
            self.reporter.warning(f"{exc}; stopping {info.short_id} anyway")

    # -- stop / kill ----------------------------------------------------------------------
    def stop(self, component: Any, kill: bool = False) -> list[str]:
        """Remove the component from this host; answers the ids of the removed containers.

        Every route is first parked (switched to :data:`PARK_BACKEND`, where nothing listens),
        so no new connection reaches a container while the proxy still counts the live ones;
        then each container is drained (skipped with ``kill``), stopped and removed, and the
        routes are removed last. Parking rather than removing the route first is what lets the
        proxy's drain API observe the connections: it forgets a removed route at once.
        """
        with self.lock(component):
            view = self._view(component.name)
            for route in view.routes:
                if route.get("backend") != PARK_BACKEND:
                    self._set_route(route["name"], route["listen"], PARK_BACKEND,
                                    route.get("kind", "tcp"), route.get("idleTimeout"))
            view = self._view(component.name)
            for info in view.containers:
                self._retire(component, info, view, drain=not kill)
            for route in view.routes:
                try:
                    self.proxy.remove_route(route["name"])
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise RouteError(f"cannot remove route {route['name']}: {exc}") from exc
                self.reporter.step(f"{component.name}: removed route {route['name']}")
            if not view.containers:
                self.reporter.step(f"{component.name}: no container to stop")
            return [c.id for c in view.containers]

    # -- recover --------------------------------------------------------------------------
    def recover(self, component: Any) -> None:
        """Bring the component to a clean state after an interrupted gantry (see module doc)."""
        with self.lock(component):
            self._recover(component)

    def _recover(self, component: Any) -> None:
        view = self._view(component.name)
        live = view.live()
        if live is None and self._readopt(component, view):
            view = self._view(component.name)
            live = view.live()
        for info in view.containers:
            if info.running:
                continue
            self.reporter.step(f"{component.name}: removing stopped container {info.short_id}")
            self._discard(info.id)
        if live is not None:
            self._ensure_routes(component, live.id)
        canary = view.canary() if live is not None else None
        for info in view.containers:
            if not info.running or info is live or info is canary:
                continue
            if (live is None or info.created > live.created) and not view.seen_by_proxy(info):
                self.reporter.step(f"{component.name}: removing {info.short_id}, left by an "
                                   "interrupted update (never routed)")
                self._discard(info.id)
            else:
                self.reporter.step(f"{component.name}: finishing the drain of {info.short_id}")
                self._retire(component, info, view, drain=True)

    def _readopt(self, component: Any, view: _View) -> bool:
        """No running container is routed, but the engine restarted one that was live (it has
        our restart policy) at a new address: point the routes at it again. The newest wins
        (an engine restart in the middle of a drain brings back the old one too)."""
        kept = [c for c in view.containers if c.running and c.restart_policy == RESTART_POLICY]
        if not kept:
            return False
        info = kept[-1]
        self.reporter.step(f"{component.name}: {info.short_id} was restarted by the engine; "
                           "routing to it again")
        self._ensure_routes(component, info.id)
        return True

    # -- monitor --------------------------------------------------------------------------
    def monitor(self, component: Any, stop: threading.Event | None = None,
                interval: float | None = None) -> None:
        """Run the health checks of the live container until ``stop`` is set; after
        ``health_failures`` consecutive failures replace it (same image) through update().

        Ends by itself when the component has no live container (e.g. ``gantry stop``).
        Falls back to the ready checks when no health checks are configured.
        """
        stop = stop or threading.Event()
        if interval is None:
            interval = H.interval_of(component)
        self.recover(component)
        streak = H.Streak(component.health_failures)
        rep = self.reporter
        rep.step(f"{component.name}: monitoring ({len(H.checks_of(component))} check(s) every "
                 f"{interval:g}s, replace after {component.health_failures} consecutive failures)")
        while not stop.is_set():
            current = self.current(component)
            if current is None:
                rep.step(f"{component.name}: no live container; monitor ends")
                return
            failing = streak.failures if streak.container == current.id else 0
            H.examine(component, self.runtime, current.id, streak)
            if streak.problems:
                rep.warning(f"{component.name}: {current.short_id} {streak.describe()}")
            elif failing:
                rep.step(f"{component.name}: {current.short_id} healthy again")
            if streak.unhealthy:
                rep.step(f"{component.name}: replacing {current.short_id}")
                try:
                    self.update(component, image=current.image)
                except UpdateFailed as exc:
                    rep.warning(f"replacement failed: {exc}")
                streak.reset()
            stop.wait(interval)


def _go_on(cancel: threading.Event | None, name: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{name}: cancelled before the switch")


def active_backends(route: dict) -> list[tuple[str, int]]:
    """(address, weight) of the backends a route sends new connections to, primary first
    (draining ones have weight 0; a proxy without weights has the primary alone)."""
    primary = route.get("backend")
    weighted = [(b["address"], int(b["weight"])) for b in route.get("backends") or ()
                if b.get("weight")]
    if not any(a == primary for a, _ in weighted):
        return [(primary, 1)] if primary else []
    return sorted(weighted, key=lambda aw: aw[0] != primary)


def _target(backend: str | Sequence[tuple[str, int]]) -> dict[str, Any]:
    """set_route keywords: one backend, or a weighted set (a set of one is one backend)."""
    if isinstance(backend, str):
        return {"backend": backend}
    if len(backend) == 1:
        return {"backend": backend[0][0]}
    return {"backends": list(backend)}


def _describe(backend: str | Sequence[tuple[str, int]]) -> str:
    if isinstance(backend, str):
        return backend
    if len(backend) == 1:
        return backend[0][0]
    return ", ".join(f"{a} ({w})" for a, w in backend)


def _probed_ports(component: Any) -> set[int]:
    """Container ports that must be reachable: routed ports and every checked/signalled one."""
    ports = {p.container for p in component.ports}
    for check in (*component.ready_checks, *component.health_checks,
                  *component.termination_checks):
        if check.kind in ("http", "tcp") and check.port:
            ports.add(check.port)
    ports |= {s.port for s in component.termination_signals if s.kind == "http" and s.port}
    return ports


def _post(address: tuple[str, int] | None, path: str, timeout: float) -> str:
    if address is None:
        return "port not reachable"
    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    try:
        conn.request("POST", path, body=b"", headers={"User-Agent": "gantry-terminate"})
        return f"HTTP {conn.getresponse().status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"failed ({exc or type(exc).__name__})"
    finally:
        conn.close()


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404 \
        or type(exc).__name__ in ("NotFound", "RouteNotFound")
