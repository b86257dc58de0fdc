"""Pull progress: the one-line summary of Docker's pull stream (recorded events) and how the
console reporter draws it (in place on a terminal, nothing elsewhere)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from gantry.liveline import ERASE
from gantry_helpers import build_unique_image, component_dict, forget_local_images
from gantry.progress import ConsoleReporter
from gantry.pullprogress import PullSummary, format_bytes

# A real pull from the test registry: 4 layers already here, 2 downloaded (3 MB and 113 B).
EVENTS = [json.loads(line) for line in
          (Path(__file__).parent.parent / "data" / "docker_pull_events.jsonl").open()]
REF = "localhost:5000/gantry-test/rec@sha256:" + "6e8716adaf6c" + "0" * 52


def _lines_after(events: list[dict]) -> list[str]:
    summary = PullSummary()
    out = []
    for event in events:
        summary.feed(event)
        out.append(summary.line())
    return out


def test_summary_of_a_recorded_pull():
    lines = _lines_after(EVENTS)
    assert lines[0] == ""  # "Pulling from ...": no layer yet
    assert lines[4] == "4/4 layers"  # four "Already exists"
    assert lines[6] == "4/6 layers"  # two layers to download, sizes not known yet
    assert lines[7] == "4/6 layers  113/113 B"  # the small one's download started
    assert "4/6 layers  0.0/3.0 MB" in lines  # the big one started: 36 kB of 3 MB
    assert "5/6 layers  3.0/3.0 MB" in lines  # the big one extracted
    assert lines[-1] == "6/6 layers  3.0/3.0 MB"  # the image events change nothing


def test_format_bytes_picks_the_unit_of_the_total():
    assert format_bytes(12_400_000, 40_100_000) == "12.4/40.1 MB"
    assert format_bytes(500, 900) == "500/900 B"
    assert format_bytes(0, 2_500_000_000) == "0.0/2.5 GB"


def test_console_reporter_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    rep = ConsoleReporter(out, live=True)
    for event in EVENTS:
        rep.pull_progress("web", REF, event)
    rep.pull_progress("web", REF, None)
    rep.step("web: pulled it")
    text = out.getvalue()
    assert text.count("\n") == 1  # every progress update went on the same line
    drawn = text.split(ERASE)
    assert drawn[1].endswith("] web: pulling localhost:5000/gantry-test/rec@sha256:6e8716adaf6c")
    # The counts come first: on a narrow terminal (80 columns here) the image is cut, not them.
    last = drawn[-2]
    assert "] web: pulling 6/6 layers  3.0/3.0 MB  localhost:5000/gantry-test/rec@" in last
    assert len(last) == 79 and max(len(d) for d in drawn) == 79
    assert drawn[-1].endswith("] web: pulled it\n")  # the progress line was erased first


def test_console_reporter_plain_elsewhere():
    out = io.StringIO()  # not a terminal
    rep = ConsoleReporter(out)
    for event in EVENTS:
        rep.pull_progress("web", REF, event)
    rep.pull_progress("web", REF, None)
    rep.step("web: pulled it")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert out.getvalue().endswith("] web: pulled it\n") and out.getvalue().count("\n") == 1


def test_update_shows_pull_progress_on_a_terminal_only(cli, private_repo, docker_client,
                                                       test_images):
    build_unique_image(docker_client, test_images["v2"], private_repo, "v2")
    forget_local_images(docker_client, private_repo)  # as on a host that never had it
    cli.write_config(component_dict(repo=private_repo, tag="v2"))
    status, out = cli.run_in_pty("update", "web")
    assert status == 0, out
    # Redrawn in place: erase, then the summary so far (a layer of its own was downloaded).
    drawn = re.findall(r"\r\x1b\[K\[ *[\d.]+s\] web: pulling "
                       r"(\d+)/(\d+) layers  [\d.]+/([\d.]+) (\w+)", out)
    assert drawn, out
    done, seen, total, unit = drawn[-1]
    assert done == seen and (total, unit) == ("2.0", "MB"), drawn[-1]
    assert re.search(r"\r\x1b\[K\[ *[\d.]+s\] web: pulled ", out), out  # erased, then the step

    forget_local_images(docker_client, private_repo)  # so the next update pulls again
    piped = cli.run("update", "web")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert "\x1b" not in piped.stdout and "\r" not in piped.stdout
    assert "web: pulled " in piped.stdout
    assert all(re.match(r"\[ *[\d.]+s\] ", line) for line in piped.stdout.splitlines())
