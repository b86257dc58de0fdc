"""End to end: following a 3-host rollout with the real commands on the real etcd and dockerd:
`update --wait` under a pseudo-terminal, `wait` piped and `--json`, `list --watch`, and
`events --follow` seeing a halt as it happens. One rollout (and one halt) serves them all."""
from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from fleet_helpers import HOSTS, ROOT, component, wait_for

TRANSITION = re.compile(r"^\+ *\d+\.\ds  (h\d)  web  r(\d+)  (.+)$")


def _argv(fleet, *args: str) -> list[str]:
    return [sys.executable, "-m", "gantryd", "--etcd", ",".join(fleet.endpoints), *args]


STARTED: list[subprocess.Popen] = []  # commands of the running test, stopped at its end


@pytest.fixture(autouse=True)
def _stop_commands() -> Iterator[None]:
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Lines:
    """A piped command whose output lines arrive on a queue (read by a thread)."""

    def __init__(self, fleet, *args: str):
        self.proc = subprocess.Popen(_argv(fleet, *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=fleet.host_env("cli"))
        STARTED.append(self.proc)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str | Callable[[str], bool], timeout: float = 60) -> str:
        """The first line (from here on) matching `pattern` (a regex or a predicate)."""
        match = pattern if callable(pattern) else lambda line: re.search(pattern, line)

        def found() -> bool:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
                if match(self.seen[-1]):
                    return True
            return False
        wait_for(found, timeout, f"a line matching {pattern!r} in {self.seen}")
        return self.seen[-1]

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        """Exit status, every line of output (those seen by `expect` too), stderr."""
        code = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        assert self.proc.stderr is not None
        return code, "".join(f"{line}\n" for line in self.seen), self.proc.stderr.read()


class _UnderPty:
    """A command on a pseudo-terminal (stdout, stderr), its output collected by a thread."""

    def __init__(self, fleet, *args: str):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(_argv(fleet, *args), stdin=slave, stdout=slave,
                                     stderr=slave, cwd=ROOT, env=fleet.host_env("cli"))
        os.close(slave)
        STARTED.append(self.proc)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self.reader.start()

    def _read(self, master: int) -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed (the command exited)
                break
            if not data:
                break
            self.chunks.append(data)
        os.close(master)

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        return code, b"".join(self.chunks).decode(errors="replace")


@pytest.mark.long
def test_a_rollout_followed_live_on_a_terminal_piped_and_as_json(fleet, test_images):
    fleet.deploy_v1(test_images)
    project = fleet.project
    listing = _Lines(fleet, "list", project, "-c", "web", "--watch", "--json")
    first = json.loads(listing.expect(r"^\{"))
    assert sorted(m["machine"] for m in first["web"]["machines"]) == sorted(HOSTS)
    events = _Lines(fleet, "events", project, "-c", "web", "--follow")
    events.expect(r"^TIME +COMPONENT")

    fleet.setconfig(component(test_images, "v2", fleet.port))
    on_tty = _UnderPty(fleet, "update", project, "-c", "web", "--wait", "--timeout", "60")
    wait_for(lambda: fleet.store.desired("web").revision == 2, 30, "revision 2")
    piped = _Lines(fleet, "wait", project, "-c", "web", "--timeout", "60")
    as_json = _Lines(fleet, "wait", project, "-c", "web", "--timeout", "60", "--json")
    # The list shown again as it changes: the hosts move on to revision 2.
    listing.expect(lambda line: {(m["status"], m["revision"]) for m in
                                 json.loads(line)["web"]["machines"]} == {("ready", 2)})

    code, tty = on_tty.finish()
    assert code == 0, tty + fleet.logs()
    for h in HOSTS:  # every host's transitions, with elapsed times
        assert re.search(rf"\+ *\d+\.\ds  {h}  web  r2  updating v1@\w+ -> v2@\w+", tty), tty
        assert re.search(rf"\+ *\d+\.\ds  {h}  web  r2  ready on v2@\w+", tty), tty
        assert re.search(rf"^{h} +web +v2@\w+ +\+\d+\.\ds +\d+\.\ds  ready", tty, re.M), tty
    assert "\x1b[" in tty and "elapsed" in tty  # the table, redrawn in place
    assert re.search(r"^rollout done in \d+\.\ds", tty, re.M), tty

    code, out, err = piped.finish()
    assert code == 0, out + err
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    transitions = [m.groups() for m in map(TRANSITION.match, lines) if m]
    assert {(h, "2") for h, rev, what in transitions if what.startswith("ready on v2@")} == \
        {(h, "2") for h in HOSTS}, out
    assert lines[-1].startswith("rollout done in "), out

    code, out, err = as_json.finish()
    assert code == 0, out + err
    records = [json.loads(x) for x in out.splitlines()]
    assert records and all({"machine", "component", "status", "revision", "image", "time",
                            "error"} <= set(r) for r in records)
    image = fleet.store.desired("web").image
    assert {r["machine"] for r in records if r["status"] == "ready" and r["revision"] == 2
            and r["image"] == image} == set(HOSTS)

    listing.proc.send_signal(signal.SIGINT)  # Ctrl-C ends a watch cleanly
    assert listing.finish()[0] == 0

    # A version that never gets ready: the follower sees the halt as it is recorded.
    fleet.setconfig(component(test_images, "never_ready", fleet.port))
    fleet.update()
    halted = events.expect(r" r3 +h\d +halted ")
    assert "ready" in halted  # the detail: why it failed
    for h in HOSTS:  # the rollout before, as it went
        assert any(re.search(rf" r2 +{h} +released ", line) for line in events.seen)
    failed = fleet.wait()
    assert failed.returncode == 1 and "rollout failed on" in failed.stderr
    assert re.search(r"r3  failed: ", failed.stdout), failed.stdout
    events.proc.send_signal(signal.SIGINT)
    assert events.finish()[0] == 0
