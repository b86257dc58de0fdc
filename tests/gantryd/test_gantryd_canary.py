"""End to end: a fleet canary (`gantryd update --canary`, `promote`, `abort`) on 3 simulated
hosts against real etcd, dockerd and registry."""
from __future__ import annotations

import loadgen  # scripts/ (on sys.path via tests/conftest.py)
import pytest
from rig import wait_for
from gantryd import rollout

from fleet_helpers import HOSTS, component, containers


def _canary_50(fleet, test_images) -> None:
    """v1 everywhere, then v2 as a 50 % canary: every host splits (and `wait` is done)."""
    fleet.deploy_v1(test_images)
    fleet.setconfig(component(test_images, "v2", fleet.port))
    out = fleet.cli("update", fleet.project, "-c", "web", "--canary", "50").stdout
    assert "canary 50%" in out, out
    fleet.wait_done()
    for h in HOSTS:
        status = fleet.status(h)
        assert (status.status, status.split_percent) == ("split", 50), (h, status)
        # Smooth weighted round-robin: 50/50 is exact per cycle of two connections.
        assert loadgen.sample(fleet.address(h), 20) == {"v1": 10, "v2": 10}
    listed = fleet.cli("list", fleet.project).stdout
    assert listed.count("canary 50%") == 1 + len(HOSTS), listed


def test_fleet_canary_then_promote(fleet, test_images, docker_client):
    targets = [fleet.address(h) for h in HOSTS]
    _canary_50(fleet, test_images)
    stable_image = fleet.store.desired("web").previous["image"]
    with loadgen.Load(targets, short_workers=1, timeout=10) as load:
        fleet.cli("promote", fleet.project, "-c", "web")
        fleet.wait_done()
    assert load.failed == 0, load.errors()
    desired = fleet.store.desired("web")
    assert desired.canary is None and desired.image != stable_image
    assert rollout.max_overlap(fleet.store.events("web"), desired.revision) == 1
    _one_container_each(fleet, docker_client)
    for h in HOSTS:
        assert loadgen.sample(fleet.address(h), 10) == {"v2": 10}
        assert (fleet.status(h).status, fleet.status(h).image) == ("ready", desired.image)


def test_fleet_canary_abort(fleet, test_images, docker_client):
    _canary_50(fleet, test_images)
    stable_image = fleet.store.desired("web").previous["image"]
    fleet.cli("abort", fleet.project, "-c", "web")
    fleet.wait_done()
    assert fleet.store.desired("web").image == stable_image
    _one_container_each(fleet, docker_client)
    for h in HOSTS:
        assert loadgen.sample(fleet.address(h), 10) == {"v1": 10}
        assert fleet.status(h).status == "ready"


@pytest.mark.parametrize("value", ["0", "100", "abc"])
def test_bad_canary_percentage_writes_nothing(fleet, test_images, value):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    bad = fleet.cli("update", fleet.project, "-c", "web", "--canary", value, check=False)
    assert bad.returncode == 2 and "1-99" in bad.stderr, bad.stderr
    assert fleet.store.desired("web") is None


def test_promote_abort_or_canary_without_what_they_need(fleet, test_images):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    first = fleet.cli("update", fleet.project, "-c", "web", "--canary", "10", check=False)
    assert first.returncode == 1 and "without --canary first" in first.stderr, first.stderr
    assert fleet.store.desired("web") is None
    fleet.update()
    before = fleet.store.desired("web")
    for command in ("promote", "abort"):
        proc = fleet.cli(command, fleet.project, "-c", "web", check=False)
        assert proc.returncode == 1 and "no canary in place for web" in proc.stderr, proc.stderr
    assert fleet.store.desired("web") == before


def _one_container_each(fleet, docker_client) -> None:
    """Every host down to one container: the old one is stopped after the drain, which may
    end after the hosts report ready (the slot goes at the drain)."""
    wait_for(lambda: all(len(containers(docker_client, fleet.project, h)) == 1 for h in HOSTS),
             30, "one container on every host")
