"""End to end: the fleet demo (scripts/demo.py) runs to the end on the real rig, with zero
failed requests, and leaves nothing behind (containers, processes, state dir).

scripts/demo is scripts/bootstrap + scripts/demo.py; the test runs scripts/demo.py alone (no
apt), with a project name and state dir of its own.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_LABEL = "io.gantry.project"
DEMO = ROOT / "scripts" / "demo.py"
BUDGET = 120  # the issue: under 2 minutes on a 2-core machine once packages are installed


def _containers(project: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (the demo's state dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture
def demo_project(docker_services, tmp_path):
    """A project name and state dir of this test alone; leftovers are removed afterwards."""
    project = f"t-demo-{uuid.uuid4().hex[:6]}"
    state_dir = tmp_path / "demo"
    yield project, state_dir
    if (state_dir / "demo.json").exists():  # the demo failed to clean up: do it, then fail
        subprocess.run([sys.executable, str(DEMO), "--stop", "--project", project,
                        "--state-dir", str(state_dir)], capture_output=True, timeout=120)
    leftovers = _containers(project)
    if leftovers:
        subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)


@pytest.mark.timeout(BUDGET + 120)
def test_demo_rolls_out_with_no_failed_request_and_cleans_up(demo_project):
    project, state_dir = demo_project
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(DEMO), "--project", project,
                           "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=BUDGET + 60, cwd=ROOT)
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"^requests failed: 0$", proc.stdout, re.M), output
    sent = re.search(r"^requests sent: +(\d+)", proc.stdout, re.M)
    assert sent and int(sent.group(1)) > 0, output
    assert re.search(r"^rollout: +complete in", proc.stdout, re.M), output
    for host in ("host1", "host2", "host3"):
        assert re.search(rf"^{host} \S+ +serves v2 ", proc.stdout, re.M), output
    # The real commands are shown to the user.
    assert f"$ gantryd update {project} -c web" in proc.stdout
    assert "--proxy-bind 127.0.0.2" in proc.stdout
    # Nothing is left behind.
    assert _containers(project) == [], output
    assert _processes_mentioning(str(state_dir)) == [], output
    assert not state_dir.exists(), output
    assert took < BUDGET, f"the demo took {took:.0f}s\n{output}"


def test_demo_stop_without_a_kept_demo_is_harmless(docker_services, tmp_path):
    project = f"t-demo-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, str(DEMO), "--stop", "--project", project,
                           "--state-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no kept demo" in proc.stdout
