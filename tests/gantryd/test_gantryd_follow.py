"""Unit: following a rollout (gantryd/follow.py) and showing it (gantryd/follow_view.py)."""
from __future__ import annotations

import io
import json

from gantryd.follow import Follower, pinned_tags, version_label
from gantryd.follow_view import JSON, PLAIN, QUIET, TTY, View, mode_for
from gantryd.store import Desired, MachineStatus

OLD = "localhost:5000/app@sha256:" + "a" * 64
NEW = "localhost:5000/app@sha256:" + "b" * 64
DESIRED = Desired(status="ready", revision=2, image=NEW, config_hash="c2",
                  component={"name": "web", "tag": "v2"})


def _status(status: str, image: str = OLD, revision: int = 2, **extra) -> MachineStatus:
    return MachineStatus(machine="h1", status=status, revision=revision, image=image,
                         config_hash="c2" if image == NEW else "c1", **extra)


def _follower() -> Follower:
    return Follower(desired={"web": DESIRED}, tags={OLD: "v1", NEW: "v2"})


def test_version_labels_name_the_pinned_tag():
    assert version_label(NEW, {NEW: "v2"}) == "v2@bbbbbbbbbbbb"
    assert version_label(OLD, {}) == "sha256:aaaaaaaaaaaa"
    assert version_label(None, {}) == "-"
    history = [Desired(status="ready", revision=1, image=OLD, component={"tag": "v1"}),
               Desired(status="stopped", revision=2, image=None, component={"tag": "v1"})]
    assert pinned_tags(history) == {OLD: "v1"}


def test_one_transition_per_change_with_timings():
    f = _follower()
    seen = []
    for t, status in ((0.0, _status("ready", revision=1)), (0.5, _status("pulling")),
                      (0.6, _status("pulling")),  # the same state again (a traffic change)
                      (1.0, _status("waiting", error="waiting for a rollout slot")),
                      (2.0, _status("updating")), (4.5, _status("ready", NEW))):
        tr = f.observe("web", "h1", status, t, f"T{t}")
        if tr is not None:
            seen.append(tr)
    assert [t.status for t in seen] == ["ready", "pulling", "waiting", "updating", "ready"]
    assert [t.detail for t in seen] == [
        "ready on v1@aaaaaaaaaaaa", "pulling v2@bbbbbbbbbbbb", "waiting for a rollout slot",
        "updating v1@aaaaaaaaaaaa -> v2@bbbbbbbbbbbb", "ready on v2@bbbbbbbbbbbb"]
    [row] = f.summary()
    assert (row.machine, row.version, row.start, row.duration) == ("h1", "v2@bbbbbbbbbbbb",
                                                                     0.5, 4.0)
    assert seen[-1].to_json() == {"machine": "h1", "component": "web", "status": "ready",
                                  "revision": 2, "image": NEW, "time": "T4.5", "elapsed": 4.5,
                                  "error": None}


def test_failures_skips_and_a_host_that_went():
    f = _follower()
    failed = f.observe("web", "h1", _status("failed", error="ready checks failed"), 1, "T")
    assert failed.detail == "failed: ready checks failed"
    assert f.observe("web", "h2", MachineStatus("h2", "frozen", 2), 1, "T").detail == \
        "frozen (skipped)"
    assert "canary (skipped" in f.observe("web", "h3", MachineStatus("h3", "canary", 2), 1,
                                          "T").detail
    gone = f.observe("web", "h1", None, 2, "T")
    assert gone.status == "gone" and gone.revision == 2
    assert f.observe("web", "h1", None, 3, "T") is None
    # A host already there when the follow began: no start, no duration.
    f.observe("web", "h4", MachineStatus("h4", "ready", 1, image=OLD), 0, "T")
    assert [(r.machine, r.start, r.duration) for r in f.summary() if r.machine == "h4"] == \
        [("h4", None, None)]


class _Out(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _show(mode: str) -> str:
    out = _Out(mode == TTY)
    view, f = View(out, mode), _follower()
    for t, status in ((0.0, _status("updating")), (1.0, _status("ready", NEW))):
        view.transition(f.observe("web", "h1", status, t, "T"))
        view.table(f, t)
    view.summary(f, 1.5, "rollout done")
    return out.getvalue()


def test_views():
    assert mode_for(_Out(True), False, False) == TTY
    assert mode_for(_Out(False), False, False) == PLAIN
    assert mode_for(_Out(True), True, False) == JSON
    assert mode_for(_Out(True), False, True) == QUIET
    plain = _show(PLAIN)
    assert "\x1b" not in plain
    assert plain.splitlines()[:2] == ["+   0.0s  h1  web  r2  updating v1@aaaaaaaaaaaa -> "
                                      "v2@bbbbbbbbbbbb", "+   1.0s  h1  web  r2  ready on "
                                      "v2@bbbbbbbbbbbb"]
    assert plain.splitlines()[-1] == "rollout done in 1.5s"
    tty = _show(TTY)
    assert "\x1b[3F\x1b[J" in tty  # the table (header, one host, elapsed) redrawn in place
    assert "ready on v2@bbbbbbbbbbbb" in tty and "rollout done in 1.5s" in tty
    lines = _show(JSON).splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["updating", "ready"]
    assert _show(QUIET) == ""
