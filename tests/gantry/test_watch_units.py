"""`gantry watch`'s small parts without Docker: spec files, the plan, the state and its HTTP
endpoint (a real server on loopback)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from gantry_helpers import component_dict, wait_for
from loadgen import fetch

from gantry import labels
from gantry.config import parse_config
from gantry.watch_files import SpecFiles, Wakeups, is_spec_name, project_of
from gantry.watch_http import parse_listen, serve
from gantry.watch_plan import Desired, Running, plan
from gantry.watch_state import WatchState


def spec(path: Path, *names: str, old: bool = True, **extra) -> Path:
    path.write_text(json.dumps({"components": [component_dict(name=n, external=8000 + i,
                                                              **extra)
                                               for i, n in enumerate(names or ("web",))]}))
    if old:  # written a while ago: complete
        os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def test_names_and_projects(tmp_path):
    assert [n for n in ("shop.json", "a.yml", "b.YAML", ".x.json", "x.json~", ".x.json.swp",
                        "#x.json#", "4913", "notes.txt") if is_spec_name(n)] == \
        ["shop.json", "a.yml", "b.YAML"]
    assert project_of("/s/My.Shop.yml") == "my-shop"
    assert project_of("/srv/Billing/.gantry") == "billing"
    d = tmp_path / "specs"
    d.mkdir()
    spec(d / "shop.json")
    spec(d / ".hidden.json")
    spec(d / "shop.json.swp")
    (tmp_path / "app").mkdir()
    named = spec(tmp_path / "app" / ".gantry")
    files = SpecFiles([str(d), str(named)])
    assert files.scan(100.0)
    assert sorted(files.projects()) == ["app", "shop"]
    assert files.owns(str(d / "gone.yml")) and files.owns(str(named))
    assert not files.owns(str(d / ".x.json")) and not files.owns(str(tmp_path / "other.json"))
    assert not files.scan(101.0)  # nothing changed: nothing read again


def test_a_file_is_read_once_it_held_still_and_was_closed(tmp_path):
    path = spec(tmp_path / "shop.json", old=False)  # just written
    files = SpecFiles([str(tmp_path)], settle=0.5)
    files.scan(100.0)
    assert files.views[str(path)].state == "pending" and files.next_look is not None
    assert files.projects() == {} and files.held() == {"shop"}
    files.scan(100.6)  # held still for the settle time
    assert files.views[str(path)].state == "loaded"
    # Open for writing (inotify saw a modification, not yet its close): not read, however old.
    spec(path, "web", "api")
    assert files.scan(200.0, writing={str(path)})
    assert files.views[str(path)].state == "pending"
    assert files.projects()["shop"].config.names == ("web",)  # the last valid one applies
    files.scan(300.0)
    assert files.projects()["shop"].config.names == ("web", "api")
    # Renamed into place (and not written since): complete at once, however fresh.
    fresh = spec(tmp_path / "fresh.json", old=False)
    files.scan(400.0, renamed={str(fresh)})
    assert files.views[str(fresh)].state == "loaded"


def test_wakeups_follow_writers_and_renames(tmp_path):
    wakeups = Wakeups([str(tmp_path)])
    try:
        assert wakeups.uses_inotify
        path = tmp_path / "shop.json"
        with open(path, "w") as f:
            f.write("{")
            f.flush()
            wait_for(lambda: (wakeups.wait(1), str(path) in wakeups.writing)[1], 10,
                     "the write to be seen")
        wait_for(lambda: (wakeups.wait(1), str(path) not in wakeups.writing)[1], 10,
                 "the close to be seen")
        spec(tmp_path / "tmp-name")
        os.rename(tmp_path / "tmp-name", path)
        wait_for(lambda: (wakeups.wait(1), str(path) in wakeups.renamed)[1], 10,
                 "the rename to be seen")
        with open(path, "a") as f:
            f.write(" ")
        wait_for(lambda: (wakeups.wait(1), str(path) not in wakeups.renamed)[1], 10,
                 "a write after the rename to count")
    finally:
        wakeups.close()


def test_invalid_file_keeps_the_last_valid_config(tmp_path):
    path = spec(tmp_path / "shop.json")
    files = SpecFiles([str(tmp_path)])
    files.scan(100.0)
    spec(path, readyTimout=3)
    assert files.scan(101.0)
    view = files.views[str(path)]
    assert view.state == "invalid" and "components[0].readyTimout" in view.error
    assert files.projects()["shop"].config.names == ("web",) and not files.held()
    # Invalid from the start: the project is held (what runs stays), nothing applies.
    fresh = SpecFiles([str(tmp_path)])
    fresh.scan(100.0)
    assert fresh.projects() == {} and fresh.held() == {"shop"}


def test_two_files_of_one_project_and_deletion(tmp_path):
    first, second = spec(tmp_path / "A.json"), spec(tmp_path / "a.json")
    files = SpecFiles([str(tmp_path)])
    files.scan(100.0)
    assert files.views[str(first)].state == "loaded"
    assert files.views[str(second)].state == "conflict"
    assert str(first) in files.views[str(second)].error
    first.unlink()  # the project is free: the other file gets it
    files.scan(101.0)
    assert files.projects()["a"].path == str(second)
    second.unlink()
    assert files.scan(102.0) and files.projects() == {} and files.views == {}


def test_a_directory_that_cannot_be_listed_keeps_its_projects(tmp_path):
    d = tmp_path / "specs"
    d.mkdir()
    path = spec(d / "shop.json")
    files = SpecFiles([str(d)])
    files.scan(100.0)
    path.unlink()
    d.rmdir()  # an unmounted volume looks like this
    files.scan(101.0)
    assert "shop" in files.projects() and not files.owns(str(path))


def _desired(project="p", name="web", digest="s1", source="/s/p.json"):
    component = parse_config({"components": [component_dict(name=name)]}).components[0]
    return {(project, name): Desired(project, source, component, digest)}


def test_plan():
    never = lambda key, digest: False  # noqa: E731
    want = _desired()
    key = ("p", "web")
    assert [a.kind for a in plan(want, {}, set(), never)] == ["start"]
    same = {key: Running("p", "web", "/s/p.json", "c1", "img", "s1")}
    assert plan(want, same, set(), never) == []
    changed = {key: Running("p", "web", "/s/p.json", "c1", "img", "s0")}
    assert [a.kind for a in plan(want, changed, set(), never)] == ["replace"]
    leftovers = {key: Running("p", "web", "/s/p.json", "c1", "img", "s1", others=1)}
    assert [a.kind for a in plan(want, leftovers, set(), never)] == ["recover"]
    # A failed spec is not tried again in a loop (its leftovers are cleaned all the same).
    assert [a.kind for a in plan(want, leftovers | changed, set(), lambda k, s: True)] == []
    mine = {("q", "api"): Running("q", "api", "/s/q.json", "c2", "img", "s", owned=True)}
    others = {("r", "db"): Running("r", "db", "", "c3", "img", "s", owned=False)}
    actions = plan(want, {**mine, **others}, set(), never)
    assert [(a.kind, a.key) for a in actions] == [("stop", ("q", "api")), ("start", key)]
    assert [a.kind for a in plan({}, mine, {"q"}, never)] == []  # held: left alone


def _state_with_web() -> tuple[WatchState, tuple[str, str]]:
    state = WatchState("m1")
    key = ("p", "web")
    state.desire(key, "/s/p.json", "r/app:v2", "s2")
    return state, key


def test_wait_for_answers():
    state, key = _state_with_web()
    assert state.wait_for(None, "web", "r/app:v2", 0)[0] == 504
    state.desire(("q", "web"), "/s/q.json", "r/app:v1", "s1")
    assert state.wait_for(None, "web", None, 0)[0] == 400
    state.forget([("q", "web")])

    state.begin(key, "s2", "r/app:v2")
    waiter: dict = {}
    thread = threading.Thread(target=lambda: waiter.update(
        answer=state.wait_for("p", "web", "r/app:v2", 30)))
    thread.start()
    state.resolved(key, "r/app@sha256:2")
    state.observe(key, "c2", "r/app@sha256:2", "s2")  # routed: the waiter is answered
    thread.join(10)
    status, body = waiter["answer"]
    assert status == 200 and body["container"] == "c2" and body["status"] == "starting"
    state.ended(key)
    for image in ("r/app:v2", "r/app@sha256:2", "sha256:2", None):
        assert state.wait_for("p", "web", image, 0)[0] == 200, image

    state.desire(key, "/s/p.json", "r/app:crash", "s3")
    state.begin(key, "s3", "r/app:crash")
    state.ended(key, "web: container exited (code 3)", retry=60)
    status, body = state.wait_for("p", "web", "r/app:crash", 5)
    assert status == 409 and body["status"] == "failed" and "exited" in body["error"]
    assert body["container"] == "c2"  # v2 still serves
    assert state.blocked(key, "s3") and not state.blocked(key, "s2")
    retry_at = state.next_retry(after=0)
    assert retry_at is not None and state.next_retry(after=retry_at) is None
    state.unblock()  # SIGHUP
    assert not state.blocked(key, "s3") and state.next_retry(after=0) is None

    state.begin(key, "s3", "r/app:crash")
    state.ended(key, "again", retry=1e-6)  # the retry time comes, the attempt may go again
    wait_for(lambda: not state.blocked(key, "s3"), 5, "the retry time")
    assert state.get(key).attempt.failures == 2


def test_http_endpoint():
    state, _ = _state_with_web()
    server = serve(("127.0.0.1", 0), state)
    where = server.server_address[:2]
    try:
        status, body = fetch(where, "/v1/state")
        assert status == 200
        (web,) = json.loads(body)["components"]
        assert web["desired"] == {"image": "r/app:v2", "spec": "s2"} and web["status"] == "pending"
        assert fetch(where, "/v1/wait_for?component=p/web&timeout=0")[0] == 504
        for query, message in (("", "component is required"),
                               ("component=web&timeout=x", "timeout: expected seconds"),
                               ("component=web&timeout=9999", "timeout: expected 0 to"),
                               ("component=web&colour=red", "unknown parameter 'colour'"),
                               ("component=p/web&project=p", "either in component")):
            status, body = fetch(where, f"/v1/wait_for?{query}")
            assert status == 400 and message in json.loads(body)["error"], query
        assert fetch(where, "/v2/state")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_parse_listen():
    assert parse_listen("127.0.0.1:8090") == ("127.0.0.1", 8090)
    assert parse_listen("[::1]:8090") == ("::1", 8090)
    for bad in ("8090", "127.0.0.1:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_listen(bad)


def test_spec_digest_counts_what_a_host_does():
    def digest(**changes) -> str:
        return labels.spec_digest(parse_config(
            {"components": [component_dict(external=8000, **changes)]}).components[0])

    base = digest()
    assert digest() == base
    for changes in ({"tag": "v2"}, {"readyTimeout": 11}, {"environmentVariables": [
            {"name": "A", "value": "1"}]}, {"healthFailures": 3}):
        assert digest(**changes) != base, changes
    assert digest(rollout={"maxParallel": 3}) == base  # the fleet's alone
