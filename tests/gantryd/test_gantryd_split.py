"""gantryd.split and the canary rules of gantryd.rollout (pure functions)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from gantryd import rollout as R
from gantryd import split
from gantryd.store import Desired, MachineStatus, StoreError

OLD_D = Desired("ready", 4, "app@sha256:old", "hash1", {"name": "web", "tag": "v1"}, "then")
NEW_D = Desired("ready", 5, "app@sha256:new", "hash2", {"name": "web", "tag": "v2"}, "now")
CANARY_D = split.begin(NEW_D, OLD_D, 30)
OLD = R.Live("app@sha256:old", "hash1", "gantryd")
CANARY = R.Live("app@sha256:new", "hash2", "gantryd", percent=30)
SPLIT = replace(OLD, canary=CANARY)


def test_begin_keeps_the_stable_side():
    assert CANARY_D.canary == 30
    assert CANARY_D.previous == {"image": "app@sha256:old", "configHash": "hash1",
                                 "component": {"name": "web", "tag": "v1"}, "revision": 4}
    # A canary over a canary replaces it and keeps the stable side.
    again = split.begin(replace(NEW_D, revision=6, image="app@sha256:v3"), CANARY_D, 50)
    assert again.previous == CANARY_D.previous and again.canary == 50
    with pytest.raises(StoreError):
        split.begin(NEW_D, None, 30)
    with pytest.raises(StoreError):
        split.begin(NEW_D, replace(OLD_D, status="stopped", image=None), 30)


def test_promote_and_abort():
    promoted = split.promote(CANARY_D)
    assert (promoted.revision, promoted.image, promoted.canary, promoted.previous) == \
        (6, "app@sha256:new", None, None)
    aborted = split.abort(CANARY_D)
    assert (aborted.revision, aborted.image, aborted.config_hash, aborted.component) == \
        (6, "app@sha256:old", "hash1", {"name": "web", "tag": "v1"})
    assert aborted.canary is None
    for fn in (split.promote, split.abort):
        with pytest.raises(split.NoCanary):
            fn(NEW_D)


def test_a_host_in_the_split_is_done():
    assert R.decide(CANARY_D, SPLIT, "h1") == R.Decision(R.IDLE, "split")
    done = MachineStatus("h1", "split", 5, OLD.image, split_percent=30, split_image=CANARY.image)
    assert R.host_done(CANARY_D, done)
    assert not R.host_done(replace(CANARY_D, canary=50), done)
    assert not R.host_done(CANARY_D, replace(done, status="ready"))
    assert split.host_status(done) == "canary 30%"
    assert split.desired_status(CANARY_D) == "canary 30%"


def test_steps():
    assert split.step(CANARY_D, OLD) == split.CANARY
    assert split.step(CANARY_D, replace(SPLIT, canary=replace(CANARY, percent=10))) == \
        split.CANARY
    assert split.step(CANARY_D, None) == split.STABLE_THEN_CANARY
    assert split.step(CANARY_D, R.Live("app@sha256:other", "h", "gantryd")) == \
        split.STABLE_THEN_CANARY
    assert split.step(split.promote(CANARY_D), SPLIT) == split.PROMOTE
    assert split.step(split.abort(CANARY_D), SPLIT) == split.ABORT
    assert split.step(replace(NEW_D, image="app@sha256:v3"), SPLIT) == split.UPDATE
    assert split.step(NEW_D, OLD) == split.UPDATE
    for desired in (split.promote(CANARY_D), split.abort(CANARY_D), CANARY_D):
        assert R.decide(desired, SPLIT if desired is not CANARY_D else OLD, "h1").action \
            == R.DEPLOY


def test_a_local_canary_split_stays_a_local_canary():
    local = replace(OLD, canary=replace(CANARY, origin="gantry"))
    assert R.decide(NEW_D, local, "h1").action == R.CANARY


def test_store_round_trip_and_bad_values(store):
    written = store.change_desired(["web"], lambda name, current: CANARY_D)["web"]
    assert store.desired("web") == written
    assert (written.canary, written.previous) == (CANARY_D.canary, CANARY_D.previous)
    key = store.keys.desired("web")
    for bad in ('{"status": "ready", "revision": 1, "image": "x", "canary": 0, "previous": {}}',
                '{"status": "ready", "revision": 1, "image": "x", "canary": 30}'):
        store.etcd.put(key, bad.encode())
        with pytest.raises(StoreError, match="canary"):
            store.desired("web")
