"""Freeze / unfreeze (gantryd/freeze.py): a frozen host is left out of a rollout, named by
`wait`, shown by `list`, and catches up once unfrozen. The rollout's pulls go through one pull
slot (rollout.maxParallelPulls: 1) on the way."""
from __future__ import annotations

import pytest

from gantryd import freeze, rollout
from gantryd.store import PULL, Desired, MachineStatus, StoreError

from fleet_helpers import HOSTS, component, private_copy, wait_for


def test_freeze_records():
    record = freeze.frozen(freeze.Freeze(), ["h2"], "disk swap")
    assert record.of("h2").reason == "disk swap" and record.of("h1") is None
    everywhere = freeze.frozen(record, [], None)
    assert everywhere.of("h1") is not None and everywhere.of("h2").reason == "disk swap"
    assert freeze.thawed(everywhere, ["h2"]).of("h2") is everywhere.of("h1")  # still "*"
    assert freeze.thawed(everywhere, []).hosts == {}
    hold = freeze.Hold("disk swap", "ops@box", "2024-01-01T00:00:00Z")
    assert hold.describe() == "frozen (disk swap, ops@box, 2024-01-01T00:00:00Z)"


def test_frozen_hosts_are_left_out_of_progress():
    desired = Desired("ready", 2, "r@sha256:2", "h")
    done = MachineStatus("h1", "ready", 2, "r@sha256:2", "h")
    frozen = MachineStatus("h2", "frozen", 1, "r@sha256:1", "h")
    p = rollout.progress(desired, [done, frozen])
    assert p.done and p.frozen == ("h2",)
    assert not rollout.progress(desired, [frozen]).done  # nobody rolled it out


def test_freeze_key_round_trip_and_bad_values(store):
    written = freeze.change(store, ["web", "db"], lambda f: freeze.frozen(f, ["h1"], "why"))
    assert freeze.read(store, "web") == written["web"] == written["db"]
    assert written["web"].mod_revision == written["db"].mod_revision  # one transaction
    assert freeze.read(store, "other") == freeze.Freeze()
    store.etcd.put(store.keys.freeze("web"), b'{"hosts": {"h1": "yes"}}')
    with pytest.raises(StoreError, match="hosts.h1 must be an object"):
        freeze.read(store, "web")


def test_frozen_host_is_skipped_then_caught_up(fleet, test_images, docker_client):
    fleet.deploy_v1(test_images)
    out = fleet.cli("freeze", fleet.project, "-c", "web", "--machine", "h2",
                    "--reason", "disk swap")
    assert "Component web -> frozen on h2" in out.stdout
    wait_for(lambda: fleet.status("h2").status == "frozen", 10, "h2 to report frozen")
    assert "frozen (disk swap, " in fleet.cli("list", fleet.project).stdout
    with private_copy(docker_client, "v2", fleet.project) as (repo, tag):
        fleet.setconfig(component(test_images, "v2", fleet.port, repo=repo, tag=tag,
                                  rollout={"maxParallelPulls": 1}))
        fleet.update()
        out = fleet.wait()
        assert out.returncode == 0, out.stderr + fleet.logs()
        assert "left out frozen hosts: h2" in out.stdout
        assert [fleet.answers(h) for h in HOSTS] == ["v2", "v1", "v2"]
        assert sorted(fleet.acquired(2)) == ["h1", "h3"]
        # One engine here for all three hosts: the first pull brings the image to the others.
        events = fleet.store.events("web")
        assert [e.kind for e in events if e.kind.startswith("pull-")] == \
            ["pull-acquired", "pull-released"]
        assert rollout.max_overlap(events, pool=PULL) == 1
        assert fleet.status("h2").status == "frozen"  # still, after the rollout

        out = fleet.cli("unfreeze", fleet.project, "-c", "web", "--machine", "h2")
        assert "Component web -> unfrozen on h2" in out.stdout
        fleet.wait_done()
    assert [fleet.answers(h) for h in HOSTS] == ["v2", "v2", "v2"]
    assert sorted(fleet.acquired(2)) == ["h1", "h2", "h3"]


def test_freeze_bad_input_writes_nothing(fleet, test_images):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    out = fleet.cli("freeze", fleet.project, "-c", "wbe", check=False)
    assert out.returncode == 1 and 'did you mean "web"' in out.stderr
    out = fleet.cli("freeze", fleet.project, "-c", "web", "--machine", "a/b", check=False)
    assert out.returncode == 2 and "bad machine name" in out.stderr
    out = fleet.cli("unfreeze", "no-such-project", "-c", "web", check=False)
    assert out.returncode == 1 and "no configuration" in out.stderr
    assert freeze.read(fleet.store, "web") == freeze.Freeze()
