"""`gantry logs`: the live container's output found by labels, and `-f` following it across an
update (the test images print one line when they start: ``app vN listening on 8080``)."""
from __future__ import annotations

import re
import signal
import threading

from gantry_helpers import component_dict, wait_for
from gantry.logs import parse_since, pick


def test_logs_prints_the_live_containers_output(cli):
    cli.write_config(component_dict(tag="v1"))
    missing = cli.run("logs", "web")
    assert missing.returncode == 1 and "web: no container on this host" in missing.stderr
    assert cli.run("update", "web").returncode == 0
    shown = cli.run("logs", "web")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "app v1 listening on 8080\n"
    assert cli.run("logs", "web", "--tail", "0").stdout == ""
    assert cli.run("logs", "web", "--since", "1h").stdout == shown.stdout
    bad = cli.run("logs", "web", "--since", "last week")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_logs_follow_goes_on_with_the_new_container(cli):
    web = component_dict(tag="v1")
    cli.write_config(web)
    assert cli.run("update", "web").returncode == 0
    following = cli.spawn("logs", "-f", "web")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(following.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "app v1 listening on 8080\n" in lines, 30, f"v1's line in {lines}")
        cli.write_config({**web, "tag": "v2"})
        updated = cli.run("update", "web")
        assert updated.returncode == 0, updated.stdout + updated.stderr
        new_id = re.search(r"web: (\w{12}) is live \((\S+)\)", updated.stdout)
        mark = f"--- web: now {new_id[1]} ({new_id[2]}) ---\n"
        wait_for(lambda: "app v2 listening on 8080\n" in lines[lines.index(mark):]
                 if mark in lines else False, 30, f"the marker, then v2's line in {lines}")
    finally:
        following.send_signal(signal.SIGINT)  # Ctrl-C
    assert following.wait(15) == 0
    reader.join(15)
    assert lines == ["app v1 listening on 8080\n", mark, "app v2 listening on 8080\n"]


def test_parse_since_and_pick():
    assert parse_since("1h30m", now=10_000) == 10_000 - 5400
    assert parse_since("90s", now=100) == 10
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2024-01-02T03:04:05+00:00") == 1704164645
    assert pick([]) is None
