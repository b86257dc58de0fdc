"""Images built on the host from a context (gantry/build.py) and SIGHUP redeploys
(gantry/hangup.py), on the real dockerd, under load through the real proxy."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import rig
from gantry import build
from gantry.buildprogress import BuildSummary
from gantry.config import ConfigError, load_config, parse_config
from gantry.errors import UpdateFailed
from gantry.liveline import ERASE
from gantry.progress import ConsoleReporter
from gantry_helpers import component_dict, forget_local_images, project_containers, wait_for
from loadgen import Load, request

ROOT = Path(__file__).resolve().parents[2]


def built_dict(context: str, ref: str | None = None, **fields: Any) -> dict:
    """The test component (``fields`` changed), built from ``context`` instead of pulled."""
    data = component_dict(**fields)
    del data["repo"], data["tag"]
    data["build"] = {"context": context, "ref": ref}
    return data


def where(data: dict) -> tuple[str, int]:
    return ("127.0.0.1", data["ports"][0]["external"])


def served(data: dict) -> str:
    ok, answer = request(where(data), "/")
    assert ok, answer
    return answer


def ids(docker_client, project: str) -> list[str]:
    return [c.id for c in project_containers(docker_client, project)]


@pytest.fixture
def built_images(docker_client, project):
    """The local repository of this test's builds (its images removed afterwards)."""
    repo = build.local_repo(project, "web")
    yield repo
    forget_local_images(docker_client, repo)


class Output:
    """The merged output of a running gantry, line by line, read by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, text: str, after: int = 0, timeout: float = 60) -> int:
        """The index of the first line from ``after`` on that contains ``text``."""
        def find() -> int | None:
            return next((i for i in range(after, len(self.lines)) if text in self.lines[i]),
                        None)
        try:
            wait_for(lambda: find() is not None, timeout, repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the output:\n{self.text()}") from None
        return find()

    def text(self) -> str:
        return "\n".join(self.lines)


# --- pure parts ---------------------------------------------------------------------------------

def test_content_hash_follows_what_the_builder_gets(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (ctx / "a").write_text("1")
    (ctx / ".dockerignore").write_text("# notes\nlogs\nDockerfile\n")
    (ctx / "logs").mkdir()
    b = parse_config({"components": [{"name": "w", "build": {}}]}).components[0].build
    base = build.content_hash(str(ctx), b)
    assert len(base) == 16 and build.content_hash(str(ctx), b) == base
    (ctx / "logs" / "x.log").write_text("ignored")
    assert build.content_hash(str(ctx), b) == base  # .dockerignore'd
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a /b\n")
    edited = build.content_hash(str(ctx), b)
    assert edited != base  # the Dockerfile counts even though .dockerignore names it
    (ctx / "a").chmod(0o755)
    assert build.content_hash(str(ctx), b) != edited
    for settings in ({"args": {"V": "1"}}, {"target": "app"}):
        other = parse_config({"components": [{"name": "w", "build": settings}]})
        assert build.content_hash(str(ctx), other.components[0].build) != base


def test_local_repo_is_a_valid_and_distinct_docker_name():
    assert build.local_repo("shop", "web") == "gantry/shop/web"
    odd = build.local_repo("a_-b", "web.")
    assert odd.startswith("gantry/a-b-") and odd != build.local_repo("a--b", "web.")


def test_build_summary():
    summary = BuildSummary()
    assert summary.line() == ""
    assert summary.feed({"stream": "Step 1/2 : FROM scratch\n"}) == ["1/2: FROM scratch"]
    summary.feed({"stream": " ---> Running in 1234\nhello\n"})
    assert summary.feed({"stream": "Step 2/2 : RUN make\n"}) == ["2/2: RUN make"]
    summary.feed({"stream": "cc -o app\n"})
    assert summary.line() == "step 2/2  RUN make"
    assert summary.where() == "step 2/2 (RUN make)"
    assert list(summary.output) == ["cc -o app"]  # the failing step's output only


BUILD_EVENTS = [{"stream": "Step 1/2 : FROM scratch\n"}, {"stream": " ---> \n"},
                {"stream": "Step 2/2 : COPY www /www\n"}, {"stream": " ---> 1a2b3c\n"},
                {"stream": "Successfully built 1a2b3c\n"}]


@pytest.mark.parametrize("terminal", [True, False])
def test_console_reporter_build_progress(terminal):
    out = io.StringIO()
    rep = ConsoleReporter(out, live=terminal)
    summary = BuildSummary()
    for event in BUILD_EVENTS:
        rep.build_progress("web", summary, summary.feed(event))
    rep.build_progress("web", None)
    rep.step("web: built it")
    text = out.getvalue()
    if terminal:  # one line redrawn in place, erased before the next step line
        assert text.count("\n") == 1 and text.endswith("] web: built it\n")
        assert text.split(ERASE)[-2].endswith("] web: building step 2/2  COPY www /www")
    else:  # a plain line per step, no escape sequences
        assert "\x1b" not in text and "\r" not in text
        assert [line.split("] ")[1] for line in text.splitlines()] == [
            "web: build step 1/2: FROM scratch", "web: build step 2/2: COPY www /www",
            "web: built it"]


def test_config_build_repo_optional_and_context_relative_to_the_file(tmp_path, monkeypatch):
    path = tmp_path / "proj" / ".gantry"
    path.parent.mkdir()
    path.write_text(json.dumps({"components": [
        {"name": "web", "build": {"context": "app", "args": {"V": "1"}}},
        {"name": "abs", "build": {"context": "/srv/app"}, "repo": "localhost:5000/x"}]}))
    monkeypatch.chdir(tmp_path)
    config = load_config(path.relative_to(tmp_path))
    web, absolute = config.components
    assert web.repo is None and web.build.context_dir == str(tmp_path / "proj" / "app")
    assert absolute.build.context_dir == "/srv/app"
    assert parse_config(config.to_dict()) == config
    with pytest.raises(ConfigError) as info:
        parse_config({"components": [{"name": "web", "build": {"dockerfile": "../Dockerfile",
                                                                "ref": "-x"}},
                                     {"name": "db"}]}, "f")
    assert [str(e) for e in info.value.errors] == [
        'f: components[0].build.dockerfile: expected a path inside the build context '
        '(relative, without ".."), got "../Dockerfile"',
        'f: components[0].build.ref: expected a git commit, branch or tag (not starting with '
        '"-", without ":" or spaces) or null, got "-x"',
        'f: components[1].repo: missing (expected a Docker repository without a tag, such as '
        '"localhost:5000/team/app", or a "build")',
    ]


# --- end to end ---------------------------------------------------------------------------------

def test_build_edit_unchanged_and_broken_under_load(cli, docker_client, project, built_images):
    ctx = cli.workdir / "app"
    ctx.mkdir()
    rig.write_context(ctx, "v1", "b1")
    data = built_dict("app", retainImages=1)  # relative: to the config file's directory
    cli.write_config(data)
    first = cli.run("update", "web")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"built {built_images}:" in first.stdout
    assert served(data) == "b1"
    (b1_ref,) = docker_client.api.images(name=built_images)[0]["RepoTags"]
    with Load([where(data)], short_workers=2) as load:
        (ctx / "www" / "index.html").write_text("b2\n")
        second = cli.run("update", "web")
        assert second.returncode == 0, second.stdout + second.stderr
        assert served(data) == "b2"
        live = ids(docker_client, project)
        assert len(live) == 1

        unchanged = cli.run("update", "web")
        assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
        assert "unchanged" in unchanged.stdout and "nothing to do" in unchanged.stdout
        assert "building" not in unchanged.stdout
        assert ids(docker_client, project) == live

        with (ctx / "Dockerfile").open("a") as f:
            f.write('RUN ["/bin/sh", "-c", "echo the-step-output; exit 3"]\n')
        broken = cli.run("update", "web")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "returned a non-zero code: 3" in broken.stderr  # the builder's own error
        assert "keeps serving" in broken.stderr and "the-step-output" in broken.stdout
        assert ids(docker_client, project) == live
        assert served(data) == "b2"
    assert load.failed == 0, load.stats
    assert set(load.versions()) <= {"b1", "b2"} and load.versions()["b2"]
    tags = [t for i in docker_client.api.images(name=built_images) for t in i["RepoTags"]]
    assert b1_ref not in tags and len(tags) == 1  # retainImages 1: the old build went


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)


def test_git_context_at_a_ref(life, tmp_path, docker_client, built_images):
    repo = tmp_path / "repo"
    svc = repo / "svc"
    svc.mkdir(parents=True)
    rig.write_context(svc, "v1", "g1")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "g1")
    _git(repo, "tag", "release-1")
    (svc / "www" / "index.html").write_text("g2\n")
    _git(repo, "commit", "-q", "-am", "g2")
    (svc / "www" / "index.html").write_text("not committed\n")

    data = built_dict(str(svc), ref="release-1")
    life.update(parse_config({"components": [data]}).components[0])
    assert served(data) == "g1"
    data["build"]["ref"] = "main"
    life.update(parse_config({"components": [data]}).components[0])
    assert served(data) == "g2"
    data["build"]["ref"] = "no-such-branch"
    with pytest.raises(UpdateFailed) as info:
        life.update(parse_config({"components": [data]}).components[0])
    assert "'no-such-branch' is not a commit, branch or tag" in str(info.value)
    assert served(data) == "g2"


def test_gantryd_refuses_a_build_without_repo(etcd, tmp_path, project):
    path = tmp_path / "fleet.gantry"
    path.write_text(json.dumps({"components": [built_dict("app")]}))
    argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(etcd.endpoints)]
    refused = subprocess.run([*argv, "setconfig", project, str(path)], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{path}: components[0].build: gantryd cannot build images" in refused.stderr
    assert "Configuration not stored." in refused.stderr
    stored = subprocess.run([*argv, "getconfig", project], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert stored.returncode == 1 and "has no configuration" in stored.stderr
    path.write_text(json.dumps({"components": [{**built_dict("app"), "repo": rig.TEST_REPO}]}))
    accepted = subprocess.run([*argv, "setconfig", project, str(path)], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
    assert accepted.returncode == 0, accepted.stderr  # with a repo, the fleet pulls that


def _monitoring(cli, data: dict, version: str) -> tuple[Path, Output]:
    """The component deployed from a context of ``version`` and a `gantry monitor` of it."""
    ctx = cli.workdir / "app"
    ctx.mkdir()
    rig.write_context(ctx, "v1", version)
    (ctx / "www" / "ready").write_text("ok\n")
    cli.write_config(data)
    first = cli.run("update", "web")
    assert first.returncode == 0, first.stdout + first.stderr
    monitor = Output(cli.spawn("monitor", "web"))
    monitor.wait("monitoring")
    return ctx, monitor


def _stop(monitor: Output) -> None:
    monitor.proc.send_signal(signal.SIGINT)
    assert monitor.proc.wait(30) == 0, monitor.text()


def test_sighup_redeploys_the_edited_context(cli, docker_client, project, built_images):
    data = built_dict("app")
    ctx, monitor = _monitoring(cli, data, "h1")
    try:
        with Load([where(data)], short_workers=2) as load:
            (ctx / "www" / "index.html").write_text("h2\n")
            monitor.proc.send_signal(signal.SIGHUP)
            switched = monitor.wait("] web: route ", after=monitor.wait("SIGHUP: redeploying"))
            # After the switch a SIGHUP lets the update finish, then redeploys again (and the
            # context is unchanged by then).
            monitor.proc.send_signal(signal.SIGHUP)
            again = monitor.wait("SIGHUP: redeploying", after=monitor.wait("is live",
                                                                            after=switched))
            monitor.wait("monitoring", after=monitor.wait("nothing to do", after=again))
            assert served(data) == "h2"
    finally:
        _stop(monitor)
    assert "gave this update up" not in monitor.text()
    assert load.failed == 0, load.stats
    assert len(ids(docker_client, project)) == 1


def test_sighup_before_the_switch_starts_over(cli, docker_client, project, built_images):
    ready = {"kind": "http", "port": 8080, "path": "/ready", "interval": 0.2, "timeout": 1}
    data = built_dict("app", readyChecks=[ready], readyTimeout=120)
    ctx, monitor = _monitoring(cli, data, "s1")
    try:
        with Load([where(data)], short_workers=2) as load:
            # s2 never becomes ready: its update waits for its ready check until given up.
            (ctx / "www" / "ready").unlink()
            (ctx / "www" / "index.html").write_text("s2\n")
            monitor.proc.send_signal(signal.SIGHUP)
            waiting = monitor.wait("waiting for ready checks",
                                   after=monitor.wait("SIGHUP: redeploying"))
            stuck = monitor.lines[waiting].split("started ")[1].split(";")[0]
            (ctx / "www" / "ready").write_text("ok\n")
            (ctx / "www" / "index.html").write_text("s3\n")
            monitor.proc.send_signal(signal.SIGHUP)
            over = monitor.wait("starting over with the newest input", after=waiting)
            assert "gave this update up before its switch" in monitor.lines[over]
            monitor.wait("is live", after=over)
            assert served(data) == "s3"
    finally:
        _stop(monitor)
    assert load.failed == 0, load.stats
    assert "s2" not in load.versions()  # never switched to
    left = ids(docker_client, project)
    assert len(left) == 1 and not left[0].startswith(stuck)
    assert f"removed {stuck}" in monitor.text()
