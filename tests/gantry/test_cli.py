"""The gantry CLI end to end: commands, output, exit statuses, the component lock."""
from __future__ import annotations

import json
import signal

from gantry.lock import ComponentLock
from gantry_helpers import component_dict, project_containers, wait_for
from loadgen import request


def test_update_list_stop(cli, docker_client, project):
    web = component_dict(tag="v1")
    cli.write_config(web)
    port = web["ports"][0]["external"]
    done = cli.run("update", "web")
    assert done.returncode == 0, done.stderr
    assert "is live" in done.stdout
    assert request(("127.0.0.1", port)) == (True, "v1")

    table = cli.run("list")
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()[:3]
    assert header.split() == ["COMPONENT", "CONTAINER", "ID", "UPTIME", "IMAGE", "STATUS"]
    assert row.split()[0] == "web" and row.split()[-1] == "running"

    cli.write_config({**web, "tag": "v2"})
    assert cli.run("update", "web").returncode == 0
    assert request(("127.0.0.1", port)) == (True, "v2")
    listed = json.loads(cli.run("list", "web", "--json").stdout)
    (only,) = listed["web"]
    assert only["state"] == "running" and only["routed"] and "@sha256:" in only["image"]

    stopped = cli.run("stop", "web")
    assert stopped.returncode == 0, stopped.stderr
    assert project_containers(docker_client, project) == []
    assert cli.run("list").stdout.strip() == "no containers"


def test_start_twice_changes_nothing(cli, docker_client, project):
    cli.write_config(component_dict(tag="v1"))
    assert cli.run("start", "web").returncode == 0
    (first,) = project_containers(docker_client, project)
    again = cli.run("start", "web")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert [c.id for c in project_containers(docker_client, project)] == [first.id]


def test_kill(cli, docker_client, project):
    cli.write_config(component_dict(tag="v1"))
    assert cli.run("update", "web").returncode == 0
    assert cli.run("kill", "web").returncode == 0
    assert project_containers(docker_client, project) == []


def test_config_error_exits_2_and_touches_nothing(cli, docker_client, project):
    cli.write_config({**component_dict(tag="v1"), "readyTimout": 3})
    bad = cli.run("update", "web")
    assert bad.returncode == 2
    assert "readyTimout" in bad.stderr
    cli.write_config(component_dict(tag="v1"))
    unknown = cli.run("update", "nope")
    assert unknown.returncode == 2 and "no component named" in unknown.stderr
    missing = cli.run("update", "web", "-f", "does-not-exist.json")
    assert missing.returncode == 2 and "file not found" in missing.stderr
    assert project_containers(docker_client, project) == []


def test_docker_unreachable_is_one_clear_line(cli, tmp_path):
    cli.write_config(component_dict(tag="v1"))
    failed = cli.run("update", "web", DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("gantry: error: cannot reach the Docker engine")


def test_failed_update_exits_1_and_keeps_old(cli, docker_client, project, proxy):
    web = component_dict(tag="v1")
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    (first,) = project_containers(docker_client, project)
    cli.write_config({**web, "tag": "crash"})
    failed = cli.run("update", "web")
    assert failed.returncode == 1
    assert "exited (code 3)" in failed.stderr and "keeps serving" in failed.stderr
    cli.write_config({**web, "tag": "no-such-tag"})
    missing = cli.run("update", "web")
    assert missing.returncode == 1 and "cannot resolve" in missing.stderr
    assert [c.id for c in project_containers(docker_client, project)] == [first.id]
    assert request(("127.0.0.1", web["ports"][0]["external"])) == (True, "v1")


def test_second_update_waits_or_refuses(cli, docker_client, project, gantry_env):
    cli.write_config(component_dict(tag="v1"))
    lock = ComponentLock(project, "web", lock_dir=__import__("pathlib").Path(
        gantry_env["GANTRY_LOCK_DIR"]), holder="the test")
    with lock:
        refused = cli.run("update", "web", "--no-wait")
        assert refused.returncode == 1
        assert "busy" in refused.stderr and "the test" in refused.stderr
        waiting = cli.spawn("update", "web")
        first_line = waiting.stdout.readline()
        assert "waiting for the lock" in first_line and "the test" in first_line
        assert project_containers(docker_client, project) == []
    rest = waiting.communicate(timeout=60)[0]
    assert waiting.returncode == 0, rest
    assert len(project_containers(docker_client, project)) == 1


def test_two_concurrent_updates_both_complete(cli, docker_client, project):
    cli.write_config(component_dict(tag="v1"))
    first, second = cli.spawn("update", "web"), cli.spawn("update", "web")
    outputs = [p.communicate(timeout=60)[0] for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outputs
    assert len(project_containers(docker_client, project)) == 1


def test_monitor_ctrl_c_ends_cleanly(cli, docker_client, project):
    cli.write_config(component_dict(tag="v1"))
    assert cli.run("update", "web").returncode == 0
    monitor = cli.spawn("monitor", "web")
    wait_for(lambda: "monitoring" in monitor.stdout.readline(), 30, "the monitor to start")
    monitor.send_signal(signal.SIGINT)
    out = monitor.communicate(timeout=30)[0]
    assert monitor.returncode == 0, out
    assert "monitor stopped" in out
    assert len(project_containers(docker_client, project)) == 1


def test_help_of_every_command(cli):
    for command in ("update", "start", "stop", "kill", "list", "monitor"):
        shown = cli.run(command, "--help")
        assert shown.returncode == 0 and f"usage: gantry {command}" in shown.stdout
