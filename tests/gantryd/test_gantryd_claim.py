"""Two daemons under one machine name: the second refuses to start, naming the holder; a
restart after kill -9 (same boot, holder dead) and a claim whose lease expired are taken over
(gantryd/claim.py). Real etcd, real daemons."""
from __future__ import annotations

import json
import subprocess
import sys

from fleet_helpers import LEASE_TTL, ROOT, component, wait_for
from gantryd import etcd as E


def _second(fleet, name: str, tmp_path) -> subprocess.CompletedProcess:
    """A second `gantryd run --machine name` with a proxy of its own (another host)."""
    d = tmp_path / "twin"
    d.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(fleet.endpoints), "run",
            fleet.project, "-c", "web", "--machine", name, "--proxy-socket",
            str(d / "proxy.sock"), "--proxy-state", str(d / "proxy-state.json"),
            "--proxy-bind", "127.0.0.9", "--lease-ttl", str(LEASE_TTL)]
    env = {**fleet.host_env("twin"), "GANTRY_PROXY_SOCKET": str(d / "proxy.sock"),
           "GANTRY_PROXY_STATE": str(d / "proxy-state.json")}
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=60)
    finally:
        subprocess.run([sys.executable, "-m", "proxy", "keeper", "stop", "--socket",
                        str(d / "proxy.sock")], capture_output=True, cwd=ROOT)


def test_second_daemon_with_the_same_name_refuses(fleet, test_images, tmp_path):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    fleet.start("h1")  # idle (nothing desired yet): the name is what counts
    holder = fleet.procs["h1"].pid
    twin = _second(fleet, "h1", tmp_path)
    assert twin.returncode == 1, twin.stderr
    assert f"pid {holder}" in twin.stderr and "already used" in twin.stderr, twin.stderr
    assert "Traceback" not in twin.stderr
    assert not (tmp_path / "twin" / "proxy.sock").exists()  # refused before starting a proxy
    # The first one was left alone: still running, still the holder.
    assert fleet.procs["h1"].poll() is None
    claim = json.loads(fleet.etcd.get(fleet.store.keys.claim("web", "h1")).value)
    assert claim["pid"] == holder


def _claimed_by(fleet, machine: str) -> int | None:
    kv = fleet.etcd.get(fleet.store.keys.claim("web", machine))
    return json.loads(kv.value)["pid"] if kv is not None else None


def test_restart_after_kill9_takes_the_name_over_at_once(fleet, test_images):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    fleet.start("h1")
    old = fleet.procs["h1"].pid
    key = fleet.store.keys.claim("web", "h1")
    held = fleet.etcd.get(key).value
    fleet.kill9("h1")
    # The dead daemon's claim, on a lease that outlives the restart (a TTL still running):
    # made on this boot by a process that runs no more, so it is taken over, not waited for.
    lease = fleet.etcd.grant(120)
    fleet.etcd.put(key, held, lease=lease)
    try:
        fleet.start("h1")
        new = fleet.procs["h1"].pid
        wait_for(lambda: _claimed_by(fleet, "h1") == new, 30,
                 "the restarted daemon to hold the name")
        assert new != old and fleet.procs["h1"].poll() is None
    finally:
        fleet.etcd.revoke(lease)


def test_a_claim_from_another_machine_holds_until_its_lease_ends(fleet, test_images, tmp_path):
    fleet.setconfig(component(test_images, "v1", fleet.port))
    lease = fleet.etcd.grant(60)
    key = fleet.store.keys.claim("web", "h2")
    foreign = {"host": "clone", "boot": "another-boot", "pid": 4242, "since": "then"}
    assert fleet.etcd.txn([E.absent(key)], [E.Put(key, json.dumps(foreign).encode(), lease)]
                          ).succeeded
    twin = _second(fleet, "h2", tmp_path)
    assert twin.returncode == 1 and "pid 4242 on host clone" in twin.stderr, twin.stderr
    fleet.etcd.revoke(lease)  # the other daemon is gone: its lease ended
    fleet.start("h2")
    wait_for(lambda: fleet.status("h2") is not None, 30, "h2 to report")
