"""gantry.health: what "unhealthy" means for monitor, bake and fleet remediation."""
from __future__ import annotations

from gantry import health as H
from gantry_helpers import make_component


def test_streak_counts_consecutive_failures_of_one_container():
    streak = H.Streak(limit=3)
    for problems in (["404"], ["404"], [], ["404"], ["404"]):
        streak.observe("a", problems)
    assert streak.failures == 2 and not streak.unhealthy  # a pass starts over
    streak.observe("a", ["timeout"])
    assert streak.unhealthy and streak.describe() == "unhealthy (3/3): timeout"
    streak.observe("b", ["404"])  # a new container starts over too
    assert streak.failures == 1 and not streak.unhealthy
    streak.observe("b", ["exited"], gone=True)  # a stopped container: at once
    assert streak.unhealthy
    streak.reset()
    assert (streak.container, streak.failures, streak.unhealthy) == (None, 0, False)


def test_checks_and_interval_fall_back_to_the_ready_checks():
    with_health = make_component()
    assert H.checks_of(with_health) == with_health.health_checks
    ready_only = make_component(healthChecks=[])
    assert H.checks_of(ready_only) == ready_only.ready_checks
    assert H.interval_of(ready_only) == 0.2
    assert H.interval_of(make_component(healthChecks=[], readyChecks=[])) == 1.0
