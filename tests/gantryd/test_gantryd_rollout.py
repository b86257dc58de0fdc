"""gantryd.rollout: the per-host decision rules (pure functions)."""
from __future__ import annotations

from dataclasses import replace

from gantryd import rollout as R
from gantryd.store import Desired, Event, Halt, MachineStatus

D = Desired("ready", 5, "app@sha256:new", "hash2", {"name": "web"}, "now")
NEW = R.Live("app@sha256:new", "hash2", "gantryd")
OLD = R.Live("app@sha256:old", "hash1", "gantryd")


def test_nothing_to_do_when_live_matches():
    assert R.decide(D, NEW, "h1") == R.Decision(R.IDLE, "ready")


def test_new_image_or_config_or_missing_container_deploys():
    assert R.decide(D, OLD, "h1").action == R.DEPLOY
    assert R.decide(D, replace(NEW, config_hash="hash1"), "h1").reason == "config changed"
    assert R.decide(D, None, "h1").reason == "no live container"
    assert R.decide(D, replace(NEW, running=False), "h1").action == R.DEPLOY


def test_halted_rollout_starts_nowhere():
    halted = replace(D, halted=Halt("h2", "ready checks failed", 5))
    assert R.decide(halted, OLD, "h1").action == R.WAIT
    assert R.decide(halted, OLD, "h1").status == "halted"
    assert R.decide(halted, OLD, "h2").status == "failed"
    # Hosts that already moved keep the new version and report ready.
    assert R.decide(halted, NEW, "h3").action == R.IDLE
    # A halt of an older revision does not block a newer one.
    assert R.decide(replace(halted, revision=6), OLD, "h1").action == R.DEPLOY


def test_stop_and_kill():
    assert R.decide(replace(D, status="stopped"), OLD, "h1").action == R.STOP
    assert R.decide(replace(D, status="killed"), NEW, "h1").action == R.KILL
    assert R.decide(replace(D, status="stopped"), None, "h1") == R.Decision(R.IDLE, "stopped")


def test_canary_is_left_alone_until_a_newer_revision():
    canary = R.Live("app@sha256:mine", "hashX", R.ORIGIN_LOCAL)
    first = R.decide(D, canary, "h1")
    assert (first.action, first.canary_revision) == (R.CANARY, 5)
    assert R.decide(D, canary, "h1", canary_revision=5).action == R.CANARY
    newer = replace(D, revision=6)
    assert R.decide(newer, canary, "h1", canary_revision=5).action == R.DEPLOY
    assert R.decide(None, canary, "h1").action == R.IDLE


def ms(machine, status="ready", revision=5, image="app@sha256:new", h="hash2"):
    return MachineStatus(machine, status, revision, image, h)


def test_progress():
    assert R.progress(D, [ms("h1"), ms("h2")]).done
    p = R.progress(D, [ms("h1"), ms("h2", image="app@sha256:old")])
    assert not p.done and p.pending == ("h2",)
    assert not R.progress(D, [ms("h1", revision=4)]).done  # not seen the new revision yet
    assert not R.progress(D, []).done  # no live host
    p = R.progress(D, [ms("h1"), ms("h2", status="canary")])
    assert p.done and p.canaries == ("h2",)
    halted = replace(D, halted=Halt("h2", "boom", 5))
    assert R.progress(halted, [ms("h1")]).failed == ("h2", "boom")
    stopped = replace(D, status="stopped")
    assert R.progress(stopped, [ms("h1", "stopped", image=None)]).done


def test_max_overlap():
    def ev(kind, m, rev):
        return Event(kind, m, 1, slot=0, etcd_revision=rev)
    one_at_a_time = [ev("acquired", "h1", 1), ev("released", "h1", 2),
                     ev("acquired", "h2", 3), ev("failed", "h2", 4)]
    assert R.max_overlap(one_at_a_time) == 1
    overlapping = [ev("acquired", "h1", 1), ev("acquired", "h2", 2), ev("released", "h1", 3)]
    assert R.max_overlap(overlapping) == 2
