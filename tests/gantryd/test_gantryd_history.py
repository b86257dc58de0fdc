"""gantryd.history (pure rules: outcome, rollback target, auto-revert, audit) and
gantryd.revisions (their etcd side) against the real session etcd."""
from __future__ import annotations

from dataclasses import replace

import pytest

from gantry.config import parse_config
from gantryd import history as H
from gantryd import revisions
from gantryd import rollout as R
from gantryd.store import Conflict, Desired, Event, Halt, MachineStatus, StoreError

import loadgen  # scripts/ (on sys.path via tests/conftest.py)
from fleet_helpers import HOSTS, component, private_copy, wait_for

BASE = {"name": "web", "repo": "localhost:5000/x/app", "tag": "v1"}


def comp(**extra) -> dict:
    return parse_config({"components": [{**BASE, **extra}]}).components[0].to_dict()


def version(revision: int, image: str, tag: str = "v1", **extra) -> Desired:
    c = comp(tag=tag, **extra)
    return Desired("ready", revision, f"localhost:5000/x/app@sha256:{image}", "h" + image, c,
                   f"2026-01-01T00:00:{revision:02d}Z", actor="ann@box", cause="update")


def done(*revisions_: int) -> dict[int, H.Done]:
    return {r: H.Done(r, "2026-01-01T00:01:00Z", 12.0) for r in revisions_}


# -- pure rules ----------------------------------------------------------------------------------

def test_actor_from_the_environment(monkeypatch):
    monkeypatch.setenv(H.ENV_ACTOR, "ci-pipeline")
    assert H.actor() == "ci-pipeline"
    monkeypatch.delenv(H.ENV_ACTOR)
    assert "@" in H.actor()


def test_image_label_keeps_the_tag():
    assert H.image_label(version(1, "aa", tag="v7")) == "localhost:5000/x/app:v7@sha256:aa"
    assert H.image_label(replace(version(1, "aa"), image="sha256:local")) == "sha256:local"


def test_outcomes():
    v1, v2, v3 = version(1, "a1"), version(2, "a2"), version(3, "a3")
    bad = version(4, "a4")
    revert = H.repin(v3, bad, H.AUTO_REVERT, "gantryd@h2", reverted=Halt("h2", "not ready", 4))
    entries = [v1, v2, v3, bad, revert]
    events = [Event("halted", "h2", 4, detail="not ready", etcd_revision=9)]
    marks = done(1, 3)
    got = {e.revision: H.outcome(e, entries, revert, marks, events) for e in entries}
    assert got == {1: "rolled out in 12 s", 2: "superseded by r3", 3: "rolled out in 12 s",
                   4: "halted on h2: not ready; reverted by r5", 5: "in progress"}
    # A plain halt of the current revision, known from the desired state alone.
    halted = replace(v3, halted=Halt("h1", "pull failed", 3))
    assert H.outcome(v3, entries[:3], halted, done(1), []) == "halted on h1: pull failed"
    stop = replace(v2, status="stopped", cause="stop")
    assert H.outcome(stop, [v1, stop], stop, done(2), []) == "stopped in 12 s"
    row = H.rows(entries, revert, marks, events, limit=2)
    assert [r["revision"] for r in row] == [5, 4]
    assert row[0]["cause"] == "auto-revert to r3" and row[0]["actor"] == "gantryd@h2"


def test_rollback_target():
    v1, v2, v3 = version(1, "a1"), version(2, "a2"), version(3, "a1")
    entries = [v1, v2, v3]
    # The last stable revision before the current one that runs something else.
    assert H.rollback_target(entries, done(1, 2, 3), v3).revision == 2
    assert H.rollback_target(entries, done(1, 3), v3, to=2).revision == 2
    with pytest.raises(H.NoTarget, match="no stable revision before r3"):
        H.rollback_target(entries, done(1, 3), v3)  # r1 runs what r3 runs
    with pytest.raises(H.NoTarget, match=r"unknown revision 9 \(kept: r1..r3\)"):
        H.rollback_target(entries, done(1), v3, to=9)
    stop = replace(v2, status="stopped")
    with pytest.raises(H.NoTarget, match="revision 2 stopped the component: not a version"):
        H.rollback_target([v1, stop, v3], done(1), v3, to=2)
    new = H.repin(v1, v3, H.ROLLBACK, "bob@box")
    assert (new.revision, new.image, new.component, new.source, new.cause) == (
        4, v1.image, v1.component, 1, "rollback")


def test_expect_refuses_a_changed_revision_but_not_a_halt():
    v2 = version(2, "a2")
    H.expect("web", v2, replace(v2, halted=Halt("h1", "x", 2)), "rollback")
    with pytest.raises(Conflict, match=r"now revision 3 \(update by ann@box\); rollback not "):
        H.expect("web", v2, version(3, "a3"), "rollback")


def test_auto_revert_rules_and_wait():
    bad = version(4, "a4", rollout={"onFailure": "rollback"})
    assert H.reverts("rollback", bad) and not H.reverts("halt", bad)
    revert = H.repin(version(3, "a3"), bad, H.AUTO_REVERT, "gantryd@h2",
                     reverted=Halt("h2", "not ready", 4))
    assert not H.reverts("rollback", revert)  # a failed revert halts: never a loop
    hosts = [MachineStatus(h, "ready", 5, revert.image, revert.config_hash) for h in ("h1", "h2")]
    p = R.progress(revert, hosts)
    assert p.done and p.failed == ("h2", "not ready; revision 4 was reverted (revision 5 goes "
                                         "back to revision 3)")


def test_config_changes():
    old = {"components": [{"name": "web", "tag": "v1"}, {"name": "db"}]}
    new = {"components": [{"name": "web", "tag": "v2"}, {"name": "api"}]}
    assert H.config_changes(old, new) == {"added": ["api"], "removed": ["db"],
                                          "changed": ["web"]}
    assert H.config_changes(None, new)["added"] == ["api", "web"]


# -- against etcd ------------------------------------------------------------------------------

def write(store, desired: Desired) -> Desired:
    return store.change_desired(["web"], lambda _, cur: replace(
        desired, revision=(cur.revision if cur else 0) + 1))["web"]


def test_records_round_trip_and_are_pruned(store):
    for i in range(1, 7):
        write(store, version(0, f"a{i}", rollout={"keepRevisions": 3}))
        store.etcd.put(store.keys.done_entry("web", i), b'{"revision": %d, "at": "x"}' % i)
    kept = store.history("web")
    assert [d.revision for d in kept] == [4, 5, 6]
    assert (kept[-1].actor, kept[-1].cause) == ("ann@box", "update")
    assert sorted(revisions.done(store, "web")) == [4, 5, 6]  # pruned with their revisions
    revert = replace(kept[-1], reverted=Halt("h1", "x", 5), source=2)
    assert store.desired("web") == kept[-1] and write(store, revert).reverted.error == "x"
    with pytest.raises(StoreError, match="'reverted' must be dict/null"):
        store.etcd.put(store.keys.desired("web"), b'{"status": "stopped", "revision": 1, '
                                                   b'"reverted": 3}')
        store.desired("web")


def test_mark_done_only_when_every_live_host_is_there(store):
    d = write(store, version(0, "a1"))
    lease = store.etcd.lease(10)
    try:
        for h, image in (("h1", d.image), ("h2", "other")):
            store.put_machine("web", MachineStatus(h, "ready", 1, image, d.config_hash), lease.id)
        assert not revisions.mark_done(store, "web", 1)
        store.put_machine("web", MachineStatus("h2", "ready", 1, d.image, d.config_hash),
                          lease.id)
        assert revisions.mark_done(store, "web", 1)
        assert not revisions.mark_done(store, "web", 1)  # written once
        assert list(revisions.done(store, "web")) == [1]
    finally:
        lease.revoke()


def test_failure_halts_or_reverts_once(store):
    policy = {"rollout": {"onFailure": "rollback"}}
    write(store, version(0, "a1", **policy))
    store.etcd.put(store.keys.done_entry("web", 1), b'{"revision": 1, "at": "x"}')
    bad = write(store, version(0, "a2", **policy))
    assert revisions.fail(store, "web", bad, "h2", "not ready") == "reverted"
    assert revisions.fail(store, "web", bad, "h3", "later") is None  # first failure wins
    revert = store.desired("web")
    assert (revert.revision, revert.cause, revert.source, revert.image) == (
        3, "auto-revert", 1, version(0, "a1").image)
    assert revert.reverted == Halt("h2", "not ready", 2) and revert.actor == "gantryd@h2"
    assert [(e.kind, e.revision) for e in store.events("web")] == [("halted", 2)]
    # The revert fails too: it halts, and nothing reverts again.
    assert revisions.fail(store, "web", revert, "h1", "pull failed") == "halted"
    assert store.desired("web").revision == 3 and store.desired("web").is_halted


def test_failure_without_a_stable_revision_halts(store):
    bad = write(store, version(0, "a1", rollout={"onFailure": "rollback"}))
    assert revisions.fail(store, "web", bad, "h1", "boom") == "halted"
    assert "no stable revision to revert to" in store.desired("web").halted.error


def test_a_rollback_racing_an_update_loses_with_a_clear_error(store):
    """The rollback decided on revision 2; an update wrote revision 3 meanwhile: the rollback
    is not stacked on top of it (nor retried), nothing is written."""
    write(store, version(0, "a1"))
    seen = write(store, version(0, "a2"))
    winner = write(store, version(0, "a3"))

    def rollback(name, current):
        H.expect(name, seen, current, "rollback")
        return H.repin(version(1, "a1"), current, H.ROLLBACK, "bob@box")
    with pytest.raises(Conflict, match="now revision 3"):
        store.change_desired(["web"], rollback)
    assert store.desired("web") == winner and len(store.history("web")) == 3


def test_setconfig_is_audited_and_bounded(store, monkeypatch):
    monkeypatch.setattr(revisions, "CONFIG_LOG_KEEP", 2)
    monkeypatch.setenv(H.ENV_ACTOR, "ann")
    for tag in ("v1", "v2", "v3"):
        revisions.set_config(store, parse_config({"components": [{**BASE, "tag": tag}]}))
    log = revisions.config_log(store)
    assert [(e["version"], e["actor"], e["changed"]) for e in log] == [
        (2, "ann", ["web"]), (3, "ann", ["web"])]
    assert store.config().components[0].tag == "v3"


# -- the commands (no hosts needed) ----------------------------------------------------------

def test_history_and_rollback_bad_input(fleet, test_images, monkeypatch):
    monkeypatch.setenv(H.ENV_ACTOR, "ci-bot")
    fleet.setconfig(component(test_images, "v1", fleet.port))
    fleet.update()
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    table = fleet.cli("history", fleet.project).stdout
    assert "ci-bot" in table and ":v2@sha256:" in table and ":v1@sha256:" in table
    assert "superseded by r2" in table and "in progress" in table
    assert "CONFIG CHANGED" in table and "changed web" in table

    def refused(*args: str, code: int = 1) -> str:
        before = (fleet.store.desired("web"), len(fleet.store.history("web")))
        out = fleet.cli("rollback", fleet.project, *args, check=False)
        assert out.returncode == code, out
        assert (fleet.store.desired("web"), len(fleet.store.history("web"))) == before
        return out.stderr
    assert "unknown revision 9 (kept: r1..r2)" in refused("-c", "web", "--to", "9")
    assert "no stable revision before r2" in refused("-c", "web")  # nothing rolled out yet
    assert "did you mean" in refused("-c", "wbe", code=2)
    # An image neither in the registry nor kept by any host.
    gone = "localhost:5000/gantry-test/gone@sha256:" + "0" * 64
    write(fleet.store, replace(fleet.store.desired("web"), image=gone))
    fleet.update()
    assert f"image {gone} is not in the registry; no live host keeps it" in refused(
        "-c", "web", "--to", "3")
    out = fleet.cli("rollback", fleet.project, "-c", "web", "--to", "1")
    assert "rollback to revision 1" in out.stdout and fleet.store.desired("web").source == 1


def test_on_failure_typo_is_refused(fleet, test_images):
    path = fleet.write_config(component(test_images, "v1", fleet.port,
                                        rollout={"onFailure": "rolback"}))
    out = fleet.cli("setconfig", fleet.project, str(path), check=False)
    assert out.returncode == 2 and 'did you mean "rollback"' in out.stderr
    assert fleet.store.config() is None and revisions.config_log(fleet.store) == []


# -- on the fleet -------------------------------------------------------------------------------

@pytest.mark.long(90)
def test_fleet_keeps_the_last_n_images_and_rolls_back_without_a_pull(fleet, test_images,
                                                                     docker_client, engine,
                                                                     project):
    """retainImages 2 on 3 hosts under load: after v1 -> v2 -> v3 (each pulled by the hosts)
    exactly v2 and v3 are left, every host reports them, and a rollback to v2 pulls nothing."""
    from gantry.runtime import Runtime
    runtime = Runtime(engine)
    with private_copy(docker_client, "v1", project) as (repo, _), \
            private_copy(docker_client, "v2", project), private_copy(docker_client, "v3", project):
        def roll(tag: str) -> str:
            fleet.setconfig({**component(test_images, "v1", fleet.port, retainImages=2),
                             "repo": repo, "tag": tag})
            fleet.update()
            return fleet.store.desired("web").image
        pinned = {"v1": roll("v1")}
        fleet.start_all()
        fleet.wait_done()
        targets = [fleet.address(h) for h in HOSTS]
        with loadgen.Load(targets, short_workers=2, timeout=10) as load:
            for tag in ("v2", "v3"):
                pinned[tag] = roll(tag)
                fleet.wait_done()
            # Images are pruned once the old container is stopped, after the hosts report
            # ready (the slot goes at the drain), and reported again after that.
            wait_for(lambda: {fleet.status(h).retained for h in HOSTS} == {
                (pinned["v3"], pinned["v2"])}, 30, "every host to report v3 and v2 retained")
            wait_for(lambda: {t for t, ref in pinned.items() if runtime.has_image(ref)}
                     == {"v2", "v3"}, 30, "v1 pruned by every host")
            pulls = {h: _pulls(fleet, h) for h in HOSTS}
            fleet.cli("rollback", fleet.project, "-c", "web")
            fleet.wait_done()
            load.wait_for(lambda ld: all(ld.stats[t].versions["v2"] >= 3 for t in targets), 20)
        assert load.failed == 0, load.errors()
        assert {fleet.answers(h) for h in HOSTS} == {"v2"}
        assert {h: _pulls(fleet, h) for h in HOSTS} == pulls  # retained: nothing pulled


def _pulls(fleet, host: str) -> int:
    return (fleet.base / host / "gantryd.log").read_text().count("web: pulling")
