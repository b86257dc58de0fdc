"""Endpoint registration: every `gantryd run` publishes its live ports on its lease, and
`gantryd endpoints` renders them for a load balancer: a real HAProxy follows the fleet (real
etcd, dockerd, registry, haproxy, nginx)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import loadgen
import rig
from fleet_helpers import HOSTS, LEASE_TTL, ROOT, containers, wait_for
from gantry.config import parse_config
from gantryd.cli import main
from gantryd.endpoint_render import (FORMATS, EndpointTemplate, Group, Output, TemplateError,
                                     groups)
from gantryd.endpoints import Endpoint, Publisher, advertise_address, read
from gantryd.etcd import Etcd
from gantryd.rollout import Live
from gantryd.store import Desired, MachineStatus, Store, _dump

HAPROXY_MAIN = """\
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend web
    bind 127.0.0.1:{port}
    default_backend {backend}
"""


def _gantryd(endpoints: list[str], *args: str) -> list[str]:
    return [sys.executable, "-m", "gantryd", "--etcd", ",".join(endpoints), *args]


def _watcher(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _servers(path: Path) -> list[str]:
    """The `server` lines of a rendered HAProxy file: the machine names."""
    text = path.read_text() if path.exists() else ""
    return sorted(line.split()[1] for line in text.splitlines()
                  if line.strip().startswith("server "))


@pytest.mark.timeout(120)
def test_haproxy_follows_the_fleet(fleet, test_images, docker_client, tmp_path):
    fleet.deploy_v1(test_images)
    found = json.loads(fleet.cli("endpoints", fleet.project, "--json").stdout)
    assert [(e["machine"], e["address"], e["port"], e["revision"], e["healthy"], e["kind"])
            for e in found] == [(h, HOSTS[h], fleet.port, 1, True, "http") for h in HOSTS]
    assert len({e["image"] for e in found}) == 1 and "@sha256:" in found[0]["image"]
    table = fleet.cli("endpoints", fleet.project).stdout
    assert f"127.0.0.3:{fleet.port}" in table and "HEALTHY" in table

    # The watcher writes HAProxy's backends; its first reload fails (no HAProxy yet):
    # logged, and it carries on.
    backends, pidfile, log = tmp_path / "backends.cfg", tmp_path / "haproxy.pid", \
        tmp_path / "watch.log"
    watcher = _watcher(_gantryd(fleet.endpoints, "endpoints", fleet.project, "--format",
                                "haproxy", "--watch", "--output", str(backends),
                                "--reload-cmd", f"kill -USR2 $(cat {pidfile})"), log)
    haproxy = None
    try:
        wait_for(lambda: _servers(backends) == sorted(HOSTS), 15,
                 f"the rendered backends\n{log.read_text()}")
        wait_for(lambda: "reload command failed" in log.read_text(), 10, "the failed reload")
        assert watcher.poll() is None

        port = rig.free_port()
        backend = f"{fleet.project}_web_{fleet.port}"
        main = tmp_path / "haproxy.cfg"
        main.write_text(HAPROXY_MAIN.format(port=port, backend=backend))
        with open(tmp_path / "haproxy.log", "ab") as errors:
            haproxy = subprocess.Popen(["haproxy", "-W", "-f", str(main), "-f", str(backends),
                                        "-p", str(pidfile)], stdout=subprocess.DEVNULL,
                                       stderr=errors)
        ids = {h: containers(docker_client, fleet.project, h) for h in HOSTS}

        def served_by(n: int) -> Counter:
            """Which host's container answered each of `n` requests through HAProxy."""
            seen: Counter = Counter()
            for _ in range(n):
                ok, body = loadgen.request(("127.0.0.1", port), "/cgi-bin/env", timeout=5)
                assert ok, f"{body}\n{(tmp_path / 'haproxy.log').read_text()}"
                name = next(line.split("=", 1)[1] for line in body.splitlines()
                            if line.startswith("HOSTNAME="))
                seen[next(h for h, cids in ids.items() if any(c.startswith(name)
                                                               for c in cids))] += 1
            return seen
        wait_for(lambda: pidfile.exists() and loadgen.request(("127.0.0.1", port))[0], 10,
                 "HAProxy to answer")
        assert set(served_by(9)) == set(HOSTS)  # balanced across the three hosts

        # A host whose daemon dies leaves the file within its lease TTL; HAProxy, reloaded,
        # keeps answering from the two others.
        killed = time.monotonic()
        fleet.kill9("h2")
        wait_for(lambda: _servers(backends) == ["h1", "h3"], LEASE_TTL + 10,
                 f"h2 to leave the file\n{log.read_text()}")
        print(f"h2 left the file {time.monotonic() - killed:.1f} s after its kill -9 "
              f"(lease TTL {LEASE_TTL} s)")
        wait_for(lambda: set(served_by(6)) == {"h1", "h3"}, 15, "HAProxy to drop h2")
        assert "reloaded: kill -USR2" in log.read_text()
        assert watcher.poll() is None

        # A component stopped on its hosts leaves the file at once (its backend stays).
        fleet.cli("stop", fleet.project, "-c", "web")
        wait_for(lambda: _servers(backends) == [], 15, f"an empty backend\n{log.read_text()}")
        assert f"backend {backend}" in backends.read_text()
        assert json.loads(fleet.cli("endpoints", fleet.project, "--json").stdout) == []
    finally:
        code = _stop(watcher)
        if haproxy is not None:
            _stop(haproxy, signal.SIGTERM)
    assert code == 0, log.read_text()  # Ctrl-C ends the watch: exit 0


def _endpoint(store: Store, machine: str, address: str, lease: int | None = None,
              **extra) -> None:
    e = Endpoint("web", machine, address, 8080, "http", 1, "repo@sha256:ab", **extra)
    store.etcd.put(store.keys.endpoint("web", machine, 8080), _dump(e.to_json()), lease=lease)


def test_watch_survives_etcd_and_file_trouble(project, tmp_path):
    """etcd away: the watcher keeps the last file and carries on when etcd is back; the
    file's folder gone: it says so and writes again once it is back."""
    cluster = rig.EtcdCluster(size=1).start()
    client = Etcd(cluster.endpoints)
    try:
        store = Store(client, project)
        config = tmp_path / "c.json"
        config.write_text(json.dumps({"components": [
            {"name": "web", "repo": "r", "ports": [{"external": 8080, "container": 80}]}]}))
        subprocess.run(_gantryd(cluster.endpoints, "setconfig", project, str(config)),
                       check=True, cwd=ROOT, capture_output=True)
        _endpoint(store, "h1", "10.0.0.1")
        folder, log = tmp_path / "conf.d", tmp_path / "watch.log"
        folder.mkdir()
        out = folder / "up.conf"
        watcher = _watcher(_gantryd(cluster.endpoints, "--etcd-timeout", "1", "endpoints",
                                    project, "--format", "nginx", "--watch", "--output",
                                    str(out)), log)
        try:
            wait_for(lambda: out.exists() and "10.0.0.1:8080;" in out.read_text(), 15,
                     f"the first rendering\n{log.read_text()}")
            cluster.kill(0)
            wait_for(lambda: "cannot read the endpoints" in log.read_text(), 20,
                     f"the outage to be noticed\n{log.read_text()}")
            assert watcher.poll() is None and "10.0.0.1:8080;" in out.read_text()
            cluster.start(0)
            _endpoint(store, "h2", "10.0.0.2")
            wait_for(lambda: "10.0.0.2:8080;" in out.read_text(), 30,
                     f"the rendering after the outage\n{log.read_text()}")
            shutil.rmtree(folder)
            _endpoint(store, "h3", "10.0.0.3")
            wait_for(lambda: "cannot write" in log.read_text(), 15, "the failed write")
            folder.mkdir()
            wait_for(lambda: out.exists() and "10.0.0.3:8080;" in out.read_text(), 15,
                     f"the write after the folder came back\n{log.read_text()}")
        finally:
            code = _stop(watcher, signal.SIGTERM)
    finally:
        client.close()
        cluster.stop()
    assert code == 0, log.read_text()  # SIGTERM ends the watch like Ctrl-C


def test_formats_are_valid_haproxy_and_nginx(tmp_path):
    """The built-in formats, with a group of hosts (one unhealthy, one IPv6) and an empty
    one, pass HAProxy's and nginx's own config checks."""
    found = [Endpoint("web", "h1", "127.0.0.2", 8080, "http"),
             Endpoint("web", "h@2", "::1", 8080, "http"),
             Endpoint("web", "h3", "127.0.0.4", 8080, "http", healthy=False)]
    shown = groups(None, ["web"], found) + [Group("db", 5432, "tcp", ())]
    haproxy = EndpointTemplate(FORMATS["haproxy"]).render("shop", shown)
    assert "server h_2 [::1]:8080 check" in haproxy and "h3" not in haproxy
    (tmp_path / "h.cfg").write_text(
        "defaults\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n"
        "frontend f\n    mode http\n    bind 127.0.0.1:1\n    default_backend shop_web_8080\n"
        + haproxy)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    nginx = EndpointTemplate(FORMATS["nginx"]).render("shop", shown)
    assert "server 127.0.0.1:9 down;" in nginx and "server [::1]:8080;" in nginx
    (tmp_path / "n.conf").write_text(
        f"pid {tmp_path}/n.pid;\nerror_log {tmp_path}/err.log;\nevents {{}}\n"
        f"http {{\naccess_log off;\n{nginx}}}\n")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx_bin, "-t", "-c", str(tmp_path / "n.conf"), "-p",
                            str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_template_language():
    found = [Endpoint("web", "h1", "10.0.0.1", 80, "http", 3, "img"),
             Endpoint("web", "h2", "10.0.0.2", 80, "http", 3, "img")]
    text = EndpointTemplate("# $project: $count\n{{for group}}\n[$backend $kind $count]\n"
                            "{{ for endpoint }}\n$machine=$hostport r$revision $$x\n{{else}}\n"
                            "none\n{{end}}\n{{end}}\n{{for endpoint}}\n$component $server\n"
                            "{{end}}\n").render("shop", groups(None, ["web"], found)
                                                + [Group("db", 5432, "tcp", ())])
    assert text == ("# shop: 2\n[shop_web_80 http 2]\nh1=10.0.0.1:80 r3 $x\n"
                    "h2=10.0.0.2:80 r3 $x\n[shop_db_5432 tcp 0]\nnone\nweb h1\nweb h2\n")
    for bad, where in [("{{for group}}\n$machine\n{{end}}\n", "t:2: unknown placeholder "
                        "$machine"), ("{{end}}\n", "t:1: {{end}} outside"),
                       ("{{for endpoint}}\n{{for group}}\n", "t:2: {{for group}} cannot"),
                       ("{{for group}}\n", "t:1: {{for group}} has no {{end}}"),
                       ("cost: 5$\n", "t:1: a `$` that starts no placeholder")]:
        with pytest.raises(TemplateError) as info:
            EndpointTemplate(bad, "t")
        assert str(info.value).startswith(where), info.value


def test_output_replaces_the_file_only_on_change(tmp_path, caplog):
    target, count = tmp_path / "out.cfg", tmp_path / "reloads"
    out = Output(str(target), f"echo x >> {count}")
    assert out.write("a\n") and target.read_text() == "a\n"
    inode = target.stat().st_ino
    assert not out.write("a\n") and count.read_text() == "x\n"  # unchanged: no reload
    target.chmod(0o640)
    assert out.write("b\n") and target.stat().st_ino != inode  # a new file, renamed over
    assert target.stat().st_mode & 0o777 == 0o640 and count.read_text() == "x\nx\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cfg", "reloads"]  # no temp
    with caplog.at_level(logging.ERROR, "gantryd.endpoints"):
        assert not Output(str(target), "echo nope >&2; exit 3").reload()
    assert "reload command failed (exit 3)" in caplog.text and "nope" in caplog.text


def test_advertise_address():
    assert advertise_address("10.1.2.3", "127.0.0.2") == "10.1.2.3"
    assert advertise_address(None, "127.0.0.2") == "127.0.0.2"
    assert advertise_address("[::1]", None) == "::1"
    assert advertise_address("lb-1.example.org", None) == "lb-1.example.org"
    assert advertise_address(None, "0.0.0.0") not in ("0.0.0.0", "")  # the primary address
    for bad in ("0.0.0.0", "::", "a b", "-x"):
        with pytest.raises(ValueError, match="--advertise"):
            advertise_address(bad, None)


def test_bad_arguments_write_nothing(etcd, project, tmp_path, capsys):
    def run(*args: str) -> tuple[int, str]:
        try:
            code = main(["--etcd", ",".join(etcd.endpoints), *args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        return code, capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"components": [{"name": "web", "repo": "r"}]}))
    assert run("setconfig", project, str(config))[0] == 0
    out = tmp_path / "out.cfg"
    bad = tmp_path / "bad.tpl"
    bad.write_text("{{for group}}\nserver $machine\n{{end}}\n")
    code, err = run("endpoints", project, "--template", str(bad), "--output", str(out))
    assert code == 2 and f"{bad}:2: unknown placeholder $machine" in err
    code, err = run("endpoints", project, "--reload-cmd", "true")
    assert code == 2 and "--reload-cmd needs --output" in err
    code, err = run("endpoints", project, "-c", "nope", "--output", str(out))
    assert code == 1 and "nope" in err
    code, err = run("endpoints", project, "--output", str(tmp_path / "no" / "dir" / "f"))
    assert code == 1 and "cannot write" in err
    assert not out.exists()
    code, err = run("run", project, "-c", "web", "--advertise", "0.0.0.0")
    assert code == 2 and "--advertise '0.0.0.0': a wildcard" in err


class _Routes:
    """The one thing the publisher asks the host's lifecycle: its proxy routes."""

    def routes(self, component: str) -> list[dict]:
        return [{"name": f"p.{component}.8080", "kind": "http"},
                {"name": f"p.{component}.9090", "kind": "tcp"}]


def test_publisher_follows_what_the_host_serves(store):
    store.set_config(parse_config({"components": [{"name": "web", "repo": "r"}]}))
    for rev, image in ((1, "r@sha256:a1"), (2, "r@sha256:a2")):
        store.change_desired(["web"], lambda _, cur, rev=rev, image=image: Desired(
            "ready", rev, image, "h", {"name": "web", "repo": "r"}))
    lease = store.etcd.lease(10)
    v1 = Live("r@sha256:a1", "h", "gantryd")
    pub = Publisher(store, "h1", "10.0.0.1", _Routes())

    def report(status: str, rev: int, live=v1, publisher=pub, on=lease) -> list[tuple]:
        publisher.publish("web", MachineStatus("h1", status, rev), live, on.id)
        return [(e.port, e.kind, e.revision, e.image, e.healthy) for e in read(store, ["web"])]
    try:
        assert report("ready", 1) == [(8080, "http", 1, v1.image, True),
                                      (9090, "tcp", 1, v1.image, True)]
        key = store.keys.endpoint("web", "h1", 8080)
        written = store.etcd.get(key)
        assert written.lease == lease.id
        # A rollout under way: the host still serves revision 1; nothing is rewritten.
        assert report("updating", 2)[0][2] == 1
        assert store.etcd.get(key).mod_revision == written.mod_revision
        assert report("unhealthy", 2)[0][4] is False
        # A daemon restarted mid-rollout finds the revision of what it serves in the history.
        other = store.etcd.lease(10)
        assert report("waiting", 2, publisher=Publisher(store, "h1", "10.0.0.1", _Routes()),
                      on=other)[0][2:] == (1, v1.image, True)
        assert store.etcd.get(key).lease == other.id
        other.revoke()
        assert report("ready", 2, live=Live("r@sha256:a2", "h", "gantryd"))[0][2] == 2
        assert report("stopping", 2) == []  # withdrawn before the drain
        assert report("stopped", 2, live=None) == []
    finally:
        lease.revoke()
