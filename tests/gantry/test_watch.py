"""`gantry watch` end to end: a real subprocess over a spec directory, on the real dockerd,
registry and proxy, under load; its /v1/state and /v1/wait_for endpoint."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

import pytest
import rig
from gantry_helpers import (MACHINE, component_dict, forget_local_images, holds_for,
                            project_containers, wait_for)
from loadgen import Load, fetch, request

from gantry import build


class Watch:
    """``gantry watch SPECS --listen ...`` as a subprocess; its output is collected."""

    def __init__(self, env: dict[str, str], specs: Path, *extra: str) -> None:
        self.port = rig.free_port()
        argv = [sys.executable, "-m", "gantry", "watch", str(specs), "--machine", MACHINE,
                "--proxy-bind", "127.0.0.1", "--listen", f"127.0.0.1:{self.port}", *extra]
        self.proc = subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(self._answers, 20, f"gantry watch to serve /v1/state:\n{self.output()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"gantry watch exited:\n{self.output()}"
        try:
            return self.get("/v1/state")[0] == 200
        except (OSError, ValueError):  # not up yet (or, until it exits, someone else's port)
            return False

    def output(self) -> str:
        return "\n".join(self.lines)

    def get(self, path: str, timeout: float = 30) -> tuple[int, dict]:
        status, body = fetch(("127.0.0.1", self.port), path, timeout)
        return status, json.loads(body)

    def state(self) -> dict:
        return self.get("/v1/state")[1]

    def component(self, project: str, name: str) -> dict | None:
        return next((c for c in self.state()["components"]
                     if (c["project"], c["component"]) == (project, name)), None)

    def file(self, path: Path) -> dict | None:
        return next((f for f in self.state()["files"] if f["path"] == str(path)), None)

    def wait_for(self, component: str, image: str | None = None,
                 timeout: float = 30) -> tuple[int, dict]:
        query = {"component": component, "timeout": timeout, **({"image": image} if image else {})}
        return self.get(f"/v1/wait_for?{urlencode(query)}", timeout + 10)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def watch_env(gantry_env, proxy, test_images, routes_cleanup) -> dict[str, str]:
    return {**os.environ, **gantry_env}


@pytest.fixture
def start_watch(watch_env, specs):
    """``start_watch(*extra)``: a Watch over ``specs``; any still running at the end is
    killed before the project's containers are removed."""
    started: list[Watch] = []

    def start(*extra: str) -> Watch:
        started.append(Watch(watch_env, specs, *extra))
        return started[-1]

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.kill9()


@pytest.fixture
def specs(tmp_path) -> Path:
    d = tmp_path / "specs"
    d.mkdir()
    return d


@pytest.fixture
def other_project(project, proxy, docker_client):
    """A second project name of this test (a second spec file); cleaned up like the first."""
    name = f"{project}-b"
    yield name
    for c in project_containers(docker_client, name):
        c.remove(force=True)
    for route in proxy.routes():
        if route["name"].startswith(name + "."):
            proxy.remove_route(route["name"])


def write(path: Path, *components: dict) -> None:
    """Write a spec file in place (not renamed into place: the watcher must wait for it)."""
    path.write_text(json.dumps({"components": list(components)}, indent=2))


def where(c: dict) -> tuple[str, int]:
    return ("127.0.0.1", c["ports"][0]["external"])


def containers(docker_client, project: str, component: str = "web") -> list:
    return [c for c in project_containers(docker_client, project)
            if c.labels["io.gantry.component"] == component]


def test_add_edit_invalid_failing_delete(start_watch, specs, project, docker_client):
    web = component_dict(tag="v1")
    path = specs / f"{project}.json"
    watch = start_watch()

    # Added, written in two pieces: while its writer holds it open it is not read.
    text = json.dumps({"components": [web]}, indent=2)
    with open(path, "w") as f:
        f.write(text[:40])
        f.flush()
        pending = lambda: (watch.file(path) or {}).get("state") == "pending"  # noqa: E731
        wait_for(pending, 10, "the half-written file to be seen as pending")
        # Still open: not read, well past the settle time (0.5 s) an idle writer would get.
        holds_for(pending, 1.5, "the half-written file staying pending")
        f.write(text[40:])
    assert "error" not in watch.output(), watch.output()
    status, body = watch.wait_for("web", rig.image_ref("v1"))
    assert status == 200, body
    # (200 as soon as the routes point at it: the attempt may still be finishing)
    assert body["status"] in ("starting", "running") and body["source"] == str(path)
    assert request(where(web)) == (True, "v1")
    (first,) = containers(docker_client, project)
    assert first.labels["io.gantry.origin"] == "watch"
    assert first.labels["io.gantry.source"] == str(path)

    with Load([where(web)], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        # Edited: replaced through the lifecycle; wait_for answers once v2 serves.
        write(path, {**web, "tag": "v2"})
        status, body = watch.wait_for("web", rig.image_ref("v2"))
        assert status == 200, body
        assert request(where(web)) == (True, "v2")
        second = body["container"]
        assert body["image"].startswith(rig.TEST_REPO + "@")
        wait_for(lambda: [c.id for c in containers(docker_client, project)] == [second], 20,
                 "v1 to be drained and removed")

        # An invalid edit: reported with the file and the path inside it; v2 keeps serving.
        write(path, {**web, "tag": "v3", "readyTimout": 3})
        line = wait_for(lambda: next((ln for ln in watch.lines if "readyTimout" in ln), None),
                        10, "the invalid file to be reported")
        assert f"{path}: components[0]" in line, watch.output()
        assert watch.file(path)["state"] == "invalid"
        assert watch.component(project, "web")["status"] == "running"

        # A failing image: 409 for it, and v2 still serves.
        write(path, {**web, "tag": "crash"})
        status, body = watch.wait_for("web", rig.image_ref("crash"))
        assert status == 409 and "exited" in body["error"], body
        assert body["status"] == "failed" and body["container"] == second
        assert watch.component(project, "web")["lastError"] == body["error"]
        # An image that never comes: 504 at the timeout.
        assert watch.wait_for("web", rig.image_ref("v3"), timeout=0.5)[0] == 504
        sent = load.sent
        assert load.wait_for(lambda ld: ld.sent >= sent + 5, 10)
    assert load.failed == 0, load.errors()
    assert request(where(web)) == (True, "v2")
    assert [c.id for c in containers(docker_client, project)] == [second]

    # Deleted: stopped, nothing left.
    path.unlink()
    wait_for(lambda: not project_containers(docker_client, project), 20,
             "the component to be stopped")
    wait_for(lambda: watch.component(project, "web") is None, 10, "the state to forget it")
    assert watch.stop() == 0


def test_kill9_mid_update_then_restart_converges(start_watch, specs, project, other_project,
                                                  docker_client):
    web = component_dict(tag="v1")
    api = component_dict(name="api", tag="v1")
    path, other = specs / f"{project}.json", specs / f"{other_project}.json"
    write(path, web)
    write(other, api)
    watch = start_watch()
    assert watch.wait_for("web", rig.image_ref("v1"))[0] == 200
    assert watch.wait_for("api", rig.image_ref("v1"))[0] == 200
    names = {(c["project"], c["component"]) for c in watch.state()["components"]}
    assert names == {(project, "web"), (other_project, "api")}

    with Load([where(web)], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        write(path, {**web, "tag": "never-ready", "readyTimeout": 60})
        wait_for(lambda: len(containers(docker_client, project)) == 2, 20,
                 "the new container to start its ready checks")
        assert watch.component(project, "web")["status"] == "updating"
        watch.kill9()  # mid-update: the new container stays behind, never routed
        assert len(containers(docker_client, project)) == 2
        other.unlink()  # and a file goes while no watcher runs
        write(path, {**web, "tag": "v2"})

        again = start_watch()
        status, body = again.wait_for("web", rig.image_ref("v2"))
        assert status == 200, body
        assert load.wait_for(lambda ld: ld.versions()["v2"] >= 5, 10)
    assert load.failed == 0, load.errors()
    wait_for(lambda: [c.id for c in containers(docker_client, project)] == [body["container"]],
             20, "v1 to be drained and removed, and nothing else left")
    wait_for(lambda: not project_containers(docker_client, other_project), 20,
             "the component of the deleted file to be stopped")
    assert "leftover" in again.output() or "interrupted update" in again.output()
    assert again.stop() == 0


def test_lost_routes_come_back_without_a_new_container(start_watch, specs, project, proxy,
                                                      docker_client):
    """What runs is compared with the files again and again (--resync): a component whose
    container runs but is routed nowhere (the routes lost) is routed again, not redeployed."""
    web = component_dict(tag="v1")
    write(specs / f"{project}.json", web)
    watch = start_watch("--resync", "0.5")
    assert watch.wait_for("web", rig.image_ref("v1"))[0] == 200
    wait_for(lambda: watch.component(project, "web")["status"] == "running", 20, "the start")
    (first,) = containers(docker_client, project)
    proxy.remove_route(f"{project}.web.{web['ports'][0]['external']}")
    wait_for(lambda: f"web: {first.id[:12]} serves again" in watch.output(), 20,
             "the route to come back")
    assert request(where(web)) == (True, "v1")
    assert [c.id for c in containers(docker_client, project)] == [first.id]
    assert ": update (" not in watch.output().split("serves again")[1]
    assert watch.stop() == 0


def _push(docker_client, variant: str, repo: str, tag: str) -> str:
    """Point ``repo:tag`` at the test image ``variant`` in the registry; answer its digest."""
    docker_client.images.get(rig.image_ref(variant)).tag(repo, tag)
    for event in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    return f"{repo}@{docker_client.images.get_registry_data(f'{repo}:{tag}').id}"


def test_sighup_and_follow_tags_roll_out_a_moved_digest(start_watch, specs, project,
                                                        private_repo, docker_client):
    v1 = _push(docker_client, "v1", private_repo, "live")
    web = component_dict(tag="live", repo=private_repo)
    write(specs / f"{project}.json", web)
    watch = start_watch()
    assert watch.wait_for("web", v1)[0] == 200

    with Load([where(web)], short_workers=2) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        v2 = _push(docker_client, "v2", private_repo, "live")
        watch.proc.send_signal(signal.SIGHUP)  # redeploy: the tag is resolved again
        status, body = watch.wait_for("web", v2)
        assert status == 200 and body["image"] == v2, body
        wait_for(lambda: watch.component(project, "web")["status"] == "running", 20,
                 "the update to end")
        assert watch.stop() == 0

        follow = start_watch("--follow-tags", "0.3")
        v3 = _push(docker_client, "v3", private_repo, "live")
        assert follow.wait_for("web", v3)[0] == 200
        assert load.wait_for(lambda ld: ld.versions()["v3"] >= 5, 10)
    assert load.failed == 0, load.errors()

    # No flapping: the digest stays, so rounds pass and nothing is redeployed.
    (live,) = wait_for(lambda: containers(docker_client, project)
                       if follow.component(project, "web")["status"] == "running" else None,
                       20, "the v3 update to end")
    updates = follow.output().count(": update (")
    rounds = follow.state()["followRounds"]
    wait_for(lambda: follow.state()["followRounds"] >= rounds + 3, 10, "three more rounds")
    assert [c.id for c in containers(docker_client, project)] == [live.id]
    assert follow.output().count(": update (") == updates == 1, follow.output()
    assert follow.stop() == 0


@pytest.fixture
def built_images(docker_client, project):
    """The local repository of this test's builds (its images removed afterwards)."""
    yield build.local_repo(project, "web")
    forget_local_images(docker_client, build.local_repo(project, "web"))


def test_a_built_component_is_built_again_on_sighup(start_watch, specs, project, built_images,
                                                    docker_client):
    context = specs / "app"  # a directory among the spec files: not one of them
    context.mkdir()
    rig.write_context(context, "v1", "b1")
    web = {**component_dict(), "build": {"context": "app"}}
    del web["repo"], web["tag"]
    write(specs / f"{project}.json", web)
    watch = start_watch()
    status, body = watch.wait_for("web", timeout=60)  # no image: the spec as it is
    assert status == 200 and body["desired"]["image"] == "build:app", body
    assert body["image"].startswith(built_images + ":")
    assert request(where(web)) == (True, "b1")
    with Load([where(web)], short_workers=2) as load:
        (context / "www" / "index.html").write_text("b2\n")
        watch.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: request(where(web)) == (True, "b2"), 60, "the new build to serve")
        wait_for(lambda: watch.component(project, "web")["status"] == "running", 20,
                 "the update to end")
    assert load.failed == 0, load.errors()
    (only,) = containers(docker_client, project)
    assert only.id == watch.component(project, "web")["container"]
    assert watch.stop() == 0


def test_bad_command_lines_exit_2(gantry_env, specs, tmp_path):
    cases = (((str(tmp_path / "nope"),), "no such file or directory"),
             ((str(specs), "--listen", "8090"), "--listen: expected HOST:PORT"),
             ((str(specs), "-p", "x"), "drop -p"),
             ((str(specs), "--follow-tags", "0"), "positive number of seconds"))
    env = {**os.environ, **gantry_env}  # (nothing is touched: no proxy needed)
    runs = [subprocess.Popen([sys.executable, "-m", "gantry", "watch", *args], env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for args, _ in cases]  # side by side: each is a Python start-up
    for (args, message), proc in zip(cases, runs, strict=True):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and message in err, (args, err)


def test_listen_address_in_use_exits_1(watch_env, specs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "gantry", "watch", str(specs),
                               "--machine", MACHINE, "--listen", f"127.0.0.1:{port}"],
                              env=watch_env, text=True, capture_output=True, timeout=60)
    assert done.returncode == 1 and f"--listen 127.0.0.1:{port}" in done.stderr, done.stderr
