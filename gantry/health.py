"""What "unhealthy" means, once, for `gantry monitor`, the bake after a switch
(:mod:`gantry.bake`) and gantryd's fleet remediation (:mod:`gantryd.health`).

A container is unhealthy after ``healthFailures`` consecutive failed rounds of its health
checks (the ready checks when it has none), so one lost probe never replaces anything; a
container that is no longer running is unhealthy at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from . import checks as C
from .runtime import Runtime


def checks_of(component: Any) -> Sequence[Any]:
    """The checks that judge a live container: health checks, else the ready checks."""
    return component.health_checks or component.ready_checks


# Ready checks standing in for health checks are run at most this often: their interval is
# chosen to notice a starting container early, and a running one probed every 0.1 s on every
# host costs CPU for nothing (`healthChecks` with their own interval go as fast as they say).
FALLBACK_INTERVAL = 1.0


def interval_of(component: Any) -> float:
    """How often a round of checks runs: the shortest health check interval; without health
    checks the shortest ready check interval, but not more often than every second."""
    if component.health_checks:
        return min(float(c.interval) for c in component.health_checks)
    return max(FALLBACK_INTERVAL, min((float(c.interval) for c in component.ready_checks),
                                      default=FALLBACK_INTERVAL))


@dataclass
class Streak:
    """Consecutive failed rounds of one container's checks (a new container starts over)."""

    limit: int
    container: str | None = None
    failures: int = 0
    problems: tuple[str, ...] = ()
    gone: bool = False  # the container is not running any more

    @property
    def unhealthy(self) -> bool:
        return self.gone or self.failures >= self.limit

    def observe(self, container_id: str, problems: Sequence[str], gone: bool = False) -> None:
        if container_id != self.container:
            self.container, self.failures = container_id, 0
        self.failures = self.failures + 1 if problems else 0
        self.problems, self.gone = tuple(problems), gone

    def reset(self) -> None:
        self.container, self.failures, self.problems, self.gone = None, 0, (), False

    def describe(self) -> str:
        return f"unhealthy ({self.failures}/{self.limit}): {'; '.join(self.problems)}"


def examine(component: Any, runtime: Runtime, container_id: str, streak: Streak,
            known: Any = None) -> None:
    """One round of the component's checks against ``container_id``, counted in ``streak``.

    ``known``: the container's ContainerInfo as recently seen (running, and nothing said to
    have changed since): a round that passes then costs no Docker call; a failing one looks
    at the container again, so the verdict is the same as without it. Docker errors
    propagate (GantryError): an engine that does not answer says nothing about the
    container's health.
    """
    checks = checks_of(component)
    if known is not None and known.running and all(c.kind != "docker" for c in checks):
        problems = C.probe_all(checks, runtime, known)
        if not problems:
            streak.observe(container_id, ())
            return
        now = runtime.inspect(container_id)
        if now is not None and now.running:
            streak.observe(container_id, problems)
            return
    info = runtime.inspect(container_id)
    problems = C.check_once(checks, runtime, container_id)
    streak.observe(container_id, problems, gone=info is None or not info.running)
