"""Image retention (gantry/retention.py) and `gantry rollback`, against real Docker, registry
and proxy: the record on the containers, exactly `retainImages` pulled images kept, never one
gantry did not pull, and the way back to the previous image."""
from __future__ import annotations

import json

import rig
from gantry_helpers import RecordingReporter, component_dict, forget_local_images, make_component
from loadgen import Load, request

from gantry import labels as L
from gantry.retention import Record

A, B, C = "r@sha256:a", "r@sha256:b", "r@sha256:c"


def test_record_rules():
    present = {A, B, C}.__contains__
    r = Record().after(A, True, 2, present).after(B, False, 2, present)
    assert (r.ran, r.pulled) == ((B, A), {A})
    r = r.after(C, True, 2, present)
    assert r.ran == (C, B, A) and r.removable(2) == (A,) and r.previous == B
    # Once removed (no longer present), a pulled image beyond the kept ones leaves the record;
    # one gantry did not pull is never listed for removal.
    assert r.after(B, False, 2, {B, C}.__contains__).ran == (B, C)
    assert Record().after(A, False, 1, present).after(B, True, 1, present).removable(1) == ()
    assert Record.parse(r.dump()) == r
    assert Record.parse("not json") == Record() and Record.parse("") == Record()


def test_retention_keeps_the_last_n_and_rollback_goes_back(make_lifecycle, cli, private_repo,
                                                          docker_client):
    reporter = RecordingReporter()
    life = make_lifecycle(reporter)
    for tag, variant in (("local", "v3"), ("a", "v1"), ("b", "v2"), ("c", "v3")):
        rig.build_image(variant, repo=private_repo, tag=tag)
    forget_local_images(docker_client, private_repo)
    # Pushed from here and kept: present on the host, never pulled by gantry.
    rig.build_image("v3", repo=private_repo, tag="local", push=True)

    base = component_dict(repo=private_repo, tag="local", retainImages=2)
    refs = {}
    for tag in ("local", "a", "b", "c"):
        refs[tag] = life.update(make_component(**{**base, "tag": tag})).image
    present = {tag for tag, ref in refs.items() if life.runtime.has_image(ref)}
    # The last two (c, b) are kept, a (pulled, older) is gone, `local` was never pulled.
    assert present == {"local", "b", "c"}, reporter.lines
    assert f"web: removed image {refs['a']} (not among the last 2 retained)" in reporter.lines
    (live,) = docker_client.containers.list(filters={"label": f"{L.PROJECT}={cli.project}"})
    record = json.loads(live.labels[L.IMAGES])
    assert record["ran"][:2] == [refs["c"], refs["b"]] and refs["local"] not in record["pulled"]

    # `gantry rollback` under load: back to b (retained: no pull), then again to c.
    cli.write_config({**base, "tag": "c"})
    where = ("127.0.0.1", base["ports"][0]["external"])
    with Load([where], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v3"] >= 3, 10)
        out = cli.run("rollback", "web")
        assert out.returncode == 0, out.stderr
        assert f"rolled back to {refs['b']}" in out.stdout
        assert f"image {refs['b']} is present" in out.stdout  # retained: nothing pulled
        assert request(where) == (True, "v2")
        assert cli.run("rollback", "web").returncode == 0
        load.wait_for(lambda ld: ld.versions()["v3"] >= 3, 10)
    assert load.failed == 0, load.errors()
    assert request(where) == (True, "v3")
    assert {t for t, ref in refs.items() if life.runtime.has_image(ref)} == {"local", "b", "c"}


def test_rollback_without_a_record_fails(cli):
    cli.write_config(component_dict(tag="v1"))
    out = cli.run("rollback", "web")
    assert out.returncode == 1 and "no previous image recorded" in out.stderr
