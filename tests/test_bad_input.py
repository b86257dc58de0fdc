"""Bad input (issue 6, part 3): fuzz the proxy's control API on a real daemon; the gantryd and
gantry command lines facing unknown components, missing configs and files, invalid configs
and hand-written values in etcd. Nothing but the project's own errors, never a traceback,
and an invalid input changes nothing in etcd or Docker."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rig  # scripts/, put on sys.path by tests/conftest.py
from gantry.config import ConfigError, load_config, parse_config
from gantryd import cli as gantryd_cli
from gantryd.etcd import Etcd
from gantryd.store import Desired, MachineStatus, Store
from proxy.client import ProxyClient, ProxyError, _UnixConnection
from test_config_fuzz import json_values, mutate, valid_configs

ROOT = Path(__file__).resolve().parent.parent
PROJECT_LABEL = "io.gantry.project"


def _helpers(name: str, path: Path):
    """The proxy/gantryd tests' conftest modules, imported (not copied) under their own name."""
    if name not in sys.modules:
        sys.path.insert(0, str(path.parent))  # their sibling helper modules (proxy_servers)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


proxy_helpers = _helpers("_proxy_conftest", ROOT / "tests" / "proxy" / "conftest.py")
fleet_helpers = _helpers("_gantryd_conftest", ROOT / "tests" / "gantryd" / "conftest.py")
from proxy_servers import free_port  # noqa: E402  (tests/proxy/, on sys.path now)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])


# =============================================================================================
# 1. The proxy's control API, fuzzed against a real `gantry-proxy run`
# =============================================================================================

@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory):
    proc = proxy_helpers.ProxyProcess(tmp_path_factory.mktemp("fuzzproxy")).start()
    yield proc
    proc.stop()
    proc.keeper.stop()


@pytest.fixture(scope="module")
def listen_ports():
    """Free loopback ports the fuzz may listen on, and one that stays busy (409)."""
    busy = __import__("socket").create_server(("127.0.0.1", 0))
    ports = [free_port() for _ in range(3)] + [busy.getsockname()[1]]
    yield ports
    busy.close()


ROUTE_NAMES = ["fz-a", "fz-b.web.80"]
BAD_ADDRESSES = [
    "999.1.1.1:80", "127.0.0.1:70000", ":", "", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0",
    "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1: 80", "127.0.0.1:8_0", "127.0.0.1:\u00b2",
    "127.0.0.1:\u0661\u0662", "::1:80", "[::1:80", "[]:80", "[127.0.0.1]:80", "example.com:80",
    "256.0.0.1:80", "1.2.3.4:80:90", "[fe80::1%zz]:80", "127.0.0.1:" + "9" * 5000,
    None, 80, 1.5, [], {}, True, ["127.0.0.1:80"],
]
numbers = (st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([-1, 0, -0.0, 10**400, 1e308, -1e-9, 0.001]))


def _strategies(ports: list[int]) -> dict[str, st.SearchStrategy]:
    # Listen addresses: the reserved loopback ports, on loopback or all interfaces (harmless:
    # the test never connects to them), or something bad. Backends are never dialled (no
    # client connects to a listener), so any address may be used.
    listen = (st.builds("{}:{}".format,
                        st.sampled_from(["127.0.0.1", "localhost", "", "*", "0.0.0.0", "[::1]"]),
                        st.sampled_from(ports))
              | st.sampled_from(BAD_ADDRESSES) | st.text(max_size=12))
    backend = (st.builds("127.0.0.1:{}".format, st.integers(1, 65535))
               | st.sampled_from(["10.0.0.1:80", "[::1]:8080"] + BAD_ADDRESSES)
               | st.text(max_size=12))
    scalars = numbers | st.none() | st.booleans() | st.text(max_size=8)
    route = st.fixed_dictionaries(
        {"listen": listen, "backend": backend},
        optional={"kind": st.sampled_from(["tcp", "http"]) | scalars,
                  "idleTimeout": st.none() | st.sampled_from([0.5, 5]) | scalars})
    drain = st.fixed_dictionaries(
        {"backend": backend},
        optional={"timeout": st.sampled_from([0, 0.01, 1]) | numbers,
                  "close": st.booleans() | scalars})
    return {"listen": listen, "backend": backend, "route": route, "drain": drain,
            "scalars": scalars}


names = (st.sampled_from(ROUTE_NAMES) | st.text(max_size=20)
         | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,30}", fullmatch=True)
         | st.sampled_from(["", ".", "..", "a" * 201, "a/b", "a b", "%ff"]))
paths = st.one_of(
    st.sampled_from(["/ping", "/routes", "/routes/", "//ping", "/ping/", "/routes//drain",
                     "/routes/fz-a/drain/x", "/routes/%ff", "/routes/%ff%fe/drain", "/%00"]),
    names.map(lambda n: "/routes/" + quote(n, safe="")),
    names.map(lambda n: "/routes/" + quote(n, safe="") + "/drain"),
    st.binary(max_size=8).map(lambda b: "/routes/" + quote(b, safe="")),  # not UTF-8
    st.text(max_size=20).map(lambda t: "/" + quote(t, safe="/")),
    st.lists(st.sampled_from(["routes", "ping", "drain", "fz-a", "..", "%2F", ""]),
             max_size=5).map(lambda parts: "/" + "/".join(parts)),
).flatmap(lambda p: st.sampled_from([p, p + "?x=1", p + "#f"]))
methods = (st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"])
           | st.from_regex(r"[A-Z]{1,10}", fullmatch=True))


def _encode(data: st.DataObject, value: Any) -> bytes:
    text = json.dumps(value)  # NaN and Infinity are written as such, json.loads takes them
    how = data.draw(st.sampled_from(["json", "json", "truncated", "latin-1", "utf-16"]))
    if how == "truncated":
        return text[: data.draw(st.integers(0, max(len(text) - 1, 0)))].encode()
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    if how == "utf-16":
        return text.encode("utf-16")
    return text.encode()


def _body(data: st.DataObject, s: dict[str, st.SearchStrategy]) -> bytes | None:
    kind = data.draw(st.sampled_from(["none", "route", "route", "drain", "drain", "mutated",
                                      "json", "bytes", "deep"]))
    if kind == "none":
        return None
    if kind in ("route", "drain"):
        return _encode(data, data.draw(s[kind]))
    if kind == "mutated":
        valid = data.draw(st.sampled_from([
            {"listen": "127.0.0.1:1", "backend": "127.0.0.1:2", "kind": "http",
             "idleTimeout": 5},
            {"backend": "127.0.0.1:2", "timeout": 1, "close": True}]))
        return _encode(data, mutate(valid, data))
    if kind == "json":
        return _encode(data, data.draw(json_values))
    if kind == "bytes":
        return data.draw(st.binary(max_size=64))
    depth = data.draw(st.sampled_from([10, 900, 5000, 100_000]))
    return data.draw(st.sampled_from([
        b"[" * depth,
        b'{"listen": ' + b"[" * depth + b"]" * depth + b', "backend": "127.0.0.1:1"}',
        b'{"timeout": ' + b"9" * depth + b', "backend": "127.0.0.1:1"}']))


def _send(socket_path: str, method: str, path: str, body: bytes | None,
          headers: dict[str, str]) -> tuple[int, bytes]:
    """One raw HTTP request on the control socket. A dropped connection raises (and fails)."""
    conn = _UnixConnection(socket_path, 10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _check_answer(method: str, status: int, raw: bytes) -> None:
    assert 200 <= status < 300 or 400 <= status < 500, (status, raw[:300])
    if method == "HEAD":
        return  # no body
    answer = json.loads(raw)
    assert isinstance(answer, dict), raw[:300]
    if status >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], raw[:300]
        assert "internal error" not in answer["error"]


def _reset(proxy) -> None:
    """The daemon still answers (the same process), and no route is left behind."""
    client = ProxyClient(proxy.socket_path, timeout=5)
    assert client.ping()["pid"] == proxy.pid
    for route in client.routes():
        client.remove_route(route["name"])
    assert client.routes() == []


def _no_internal_errors(proxy) -> None:
    log = proxy.log()
    assert "Traceback" not in log and "control request" not in log, log[-3000:]


@FUZZ
@given(data=st.data())
def test_control_api_answers_4xx_json_or_2xx(fuzz_proxy, listen_ports, data):
    s = _strategies(listen_ports)
    try:
        for _ in range(data.draw(st.integers(1, 3))):  # a few calls: create, then change...
            method, path = data.draw(methods), data.draw(paths)
            if data.draw(st.booleans()):  # most calls on a route the fuzz may have created
                name = data.draw(st.sampled_from(ROUTE_NAMES))
                method, path = data.draw(st.sampled_from([
                    ("PUT", f"/routes/{name}"), ("POST", f"/routes/{name}/drain"),
                    ("GET", f"/routes/{name}"), ("DELETE", f"/routes/{name}")]))
            body = _body(data, s)
            headers = data.draw(st.sampled_from([
                {}, {"content-type": "application/json"}, {"content-type": "text/plain"}]))
            status, raw = _send(fuzz_proxy.socket_path, method, path, body, headers)
            _check_answer(method, status, raw)
    finally:
        _reset(fuzz_proxy)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_client_raises_only_proxy_errors(fuzz_proxy, listen_ports, data):
    s = _strategies(listen_ports)
    client = ProxyClient(fuzz_proxy.socket_path, timeout=5)
    text = st.text(max_size=12)
    name = st.sampled_from(ROUTE_NAMES) | names
    address = s["listen"] | s["backend"] | text
    call = data.draw(st.sampled_from(["ping", "routes", "route", "set_route", "set_route",
                                      "remove_route", "drain", "drain"]))
    args: tuple = ()
    if call in ("route", "remove_route"):
        args = (data.draw(name),)
    elif call == "set_route":
        args = (data.draw(name), data.draw(address), data.draw(address),
                data.draw(st.sampled_from(["tcp", "http"]) | text),
                data.draw(st.none() | numbers))
    elif call == "drain":
        args = (data.draw(name), data.draw(address),
                data.draw(st.sampled_from([0, 0.01]) | numbers),
                data.draw(st.booleans() | s["scalars"]))
    try:
        try:
            result = getattr(client, call)(*args)
        except ProxyError as exc:
            assert 400 <= exc.status < 500, (exc.status, exc)
            assert "internal error" not in str(exc)
        else:
            assert isinstance(result, (dict, list))
    finally:
        _reset(fuzz_proxy)


def test_control_api_fuzz_left_no_trace(fuzz_proxy):
    """After both fuzz runs: no internal error in the daemon's log, nothing listening."""
    _reset(fuzz_proxy)
    _no_internal_errors(fuzz_proxy)
    state = json.loads(Path(fuzz_proxy.state_path).read_text())
    assert state["routes"] == {}


@pytest.mark.parametrize("body", [
    b'{"listen": "127.0.0.1:\xc2\xb2", "backend": "127.0.0.1:1"}',  # '2' superscript
    b'{"listen": "127.0.0.1:' + b"1" * 5000 + b'", "backend": "127.0.0.1:1"}',
    b'{"listen": "127.0.0.1:1", "backend": "127.0.0.1:1", "idleTimeout": 1' + b"0" * 400 + b"}",
    b"[" * 100_000,
])
def test_found_by_fuzzing_bad_bodies_are_400(fuzz_proxy, body):
    """Regressions: each of these was a 500 (ValueError, OverflowError, RecursionError)."""
    status, raw = _send(fuzz_proxy.socket_path, "PUT", "/routes/fz-a", body, {})
    assert status == 400 and json.loads(raw)["error"], raw
    status, raw = _send(fuzz_proxy.socket_path, "POST", "/routes/fz-a/drain",
                        b'{"backend": "127.0.0.1:1", "timeout": 1' + b"0" * 400 + b"}", {})
    assert status == 400, raw
    status, raw = _send(fuzz_proxy.socket_path, "PUT", "/routes/%ff", b"{}", {})
    assert status == 400 and "UTF-8" in json.loads(raw)["error"]
    # '١٢' (Arabic-Indic digits) is no port either (it used to listen on port 12).
    status, raw = _send(fuzz_proxy.socket_path, "PUT", "/routes/fz-a",
                        '{"listen": "127.0.0.1:١٢", "backend": "127.0.0.1:1"}'.encode(), {})
    assert status == 400, raw
    client = ProxyClient(fuzz_proxy.socket_path, timeout=5)
    for timeout in (math.nan, -100.0, 1e308, 10**400):  # the socket timeout must not break
        with pytest.raises(ProxyError) as info:
            client.drain("fz-a", "127.0.0.1:1", timeout)
        assert info.value.status in (400, 404)
    _reset(fuzz_proxy)
    _no_internal_errors(fuzz_proxy)


# =============================================================================================
# 2. gantryd: unknown components, no config, missing files, unreadable values in etcd
# =============================================================================================

IMAGES = {v: rig.image_ref(v) for v in rig.VARIANTS}  # names only: nothing is pulled here
DIGEST = rig.TEST_REPO + "@sha256:" + "ab" * 32


def _keyspace(etcd: Etcd, prefix: str) -> list[tuple[str, bytes, int]]:
    kvs, _ = etcd.get_prefix(prefix.rstrip("/") + "/")
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


def _project_containers(docker_client, project: str) -> list:
    return docker_client.containers.list(all=True, ignore_removed=True,
                                         filters={"label": f"{PROJECT_LABEL}={project}"})


class Gd:
    """The gantryd CLI on the test's own key prefix (so the whole prefix is the test's)."""

    def __init__(self, fleet, prefix: str):
        self.fleet = fleet
        self.prefix = prefix
        self.project = fleet.project
        self.etcd = fleet.etcd
        self.store = Store(fleet.etcd, fleet.project, prefix)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """`gantryd` as a subprocess (check=False)."""
        return self.fleet.cli("--prefix", self.prefix, *args, check=False, timeout=60)

    def main(self, capsys, *args: str) -> tuple[int, str, str]:
        """`gantryd.cli.main` in this process: faster, and an escaping exception fails."""
        capsys.readouterr()
        rc = gantryd_cli.main(["--etcd", ",".join(self.fleet.endpoints), "--prefix",
                               self.prefix, *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    def keyspace(self) -> list[tuple[str, bytes, int]]:
        return _keyspace(self.etcd, self.prefix)

    def setconfig(self, *components: dict) -> None:
        out = self.run("setconfig", self.project, str(self.fleet.write_config(*components)))
        assert out.returncode == 0, out.stderr

    def seed(self) -> None:
        """A valid config, desired state and host status, written without Docker."""
        config = parse_config({"components": [fleet_helpers.component(IMAGES)]})
        self.store.set_config(config)
        web = config.component("web")
        self.store.change_desired(["web"], lambda name, current: Desired(
            status="ready", revision=1, image=DIGEST, config_hash=web.spec_hash(),
            component=web.to_dict(), updated_at="2026-01-01T00:00:00Z"))
        self.store.put_machine("web", MachineStatus("h9", "ready", 1, DIGEST, web.spec_hash(),
                                                    "2026-01-01T00:00:00Z"), lease=0)


@pytest.fixture
def gd(etcd, project):
    """gantryd against the session etcd, no Docker (the fleet helper without daemons)."""
    for fleet in fleet_helpers._fleet(etcd.endpoints, project):
        yield Gd(fleet, f"/gantryd-bad-{uuid.uuid4().hex[:8]}")


def _clear_error(proc_or_err, *fragments: str) -> None:
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_gantryd_update_unknown_component(gd, capsys, docker_client):
    api = dict(fleet_helpers.component(IMAGES, port=8081), name="api")
    gd.setconfig(fleet_helpers.component(IMAGES), api)
    before = gd.keyspace()
    out = gd.run("update", gd.project, "-c", "wbe")  # the real command line once
    assert out.returncode == 2
    _clear_error(out, 'no component named "wbe"; did you mean "web"?')
    for components in (["web", "wbe"], ["WEB"]):  # the known one is not updated either
        rc, _, err = gd.main(capsys, "update", gd.project, "-c", *components)
        assert rc == 2
        _clear_error(err, f'no component named "{components[-1]}"', 'did you mean "web"?')
    rc, _, err = gd.main(capsys, "update", gd.project, "-c", "zzzzzz")
    assert rc == 2
    _clear_error(err, '"zzzzzz"', "components: web, api")  # no close match: the list
    for command in ("stop", "kill"):
        rc, _, err = gd.main(capsys, command, gd.project, "-c", "wbe")
        assert rc == 1
        _clear_error(err, "no desired state for wbe")
    assert gd.keyspace() == before
    assert _project_containers(docker_client, gd.project) == []


def test_gantryd_project_without_config(gd, capsys):
    hint = f"gantryd setconfig {gd.project}"
    out = gd.run("update", gd.project, "-c", "web")
    assert out.returncode == 1
    _clear_error(out, f"project {gd.project} has no configuration", hint)
    rc, _, err = gd.main(capsys, "list", gd.project)
    assert rc == 1
    _clear_error(err, f"project {gd.project} has no configuration", hint)
    rc, _, err = gd.main(capsys, "list", gd.project, "--json")
    assert rc == 1
    rc, _, err = gd.main(capsys, "getconfig", gd.project)
    assert rc == 1
    _clear_error(err, f"project {gd.project} has no configuration")
    assert gd.keyspace() == []


def test_gantryd_setconfig_missing_or_unreadable_file(gd, tmp_path, capsys):
    gd.setconfig(fleet_helpers.component(IMAGES))
    before = gd.keyspace()
    missing = tmp_path / "nope" / ".gantry"
    out = gd.run("setconfig", gd.project, str(missing))
    assert out.returncode == 2
    _clear_error(out, f"{missing}: file not found", "Configuration not stored.")
    for path, fragment in ((tmp_path, "cannot read file"),
                           (tmp_path / "bin.json", "not UTF-8"),
                           (tmp_path / "trunc.json", str(tmp_path / "trunc.json")),
                           (tmp_path / "bad.yml", str(tmp_path / "bad.yml"))):
        if path != tmp_path:
            path.write_bytes({"bin.json": b"\xff\xfe\x00{", "trunc.json": b'{"components": [',
                              "bad.yml": b"components:\n\t- name: web\n"}[path.name])
        rc, _, err = gd.main(capsys, "setconfig", gd.project, str(path))
        assert rc == 2
        _clear_error(err, fragment, "Configuration not stored.")
    assert gd.keyspace() == before


# Hand-written values (garbage bytes, wrong JSON type, missing fields, wrong field types).
GARBAGE = [b"\xff\xfe\x00garbage", b"not json {", b"[1, 2]", b'"a string"', b"42", b"null"]
BAD_VALUES = {
    "config": GARBAGE + [b"{}", b'{"components": 5}', b'{"components": [{"name": "web"}]}'],
    "desired": GARBAGE + [
        b"{}", b'{"status": "ready"}', b'{"status": "bogus", "revision": 1}',
        b'{"status": "ready", "revision": "1", "image": "x"}',
        b'{"status": "ready", "revision": true, "image": "x"}',
        b'{"status": "ready", "revision": 1}',  # ready without an image
        b'{"status": "ready", "revision": 1, "image": "x", "halted": {"machine": "h1"}}',
        b'{"status": "ready", "revision": 1, "image": "x", "halted": 7}'],
    "machine": GARBAGE + [
        b"{}", b'{"machine": "h9"}', b'{"machine": 5, "status": "ready"}',
        b'{"machine": "h9", "status": "ready", "revision": "2"}',
        b'{"machine": "h9", "status": "ready", "canaryRevision": 1.5}'],
}
# What reads each key: these commands must fail with an error naming it.
READERS = {"config": [["list"], ["update", "-c", "web"]],
           "desired": [["list"], ["list", "-c", "web", "--json"], ["wait", "-c", "web"],
                       ["update", "-c", "web"]],
           "machine": [["list"], ["wait", "-c", "web"]]}


@pytest.mark.parametrize("which", sorted(BAD_VALUES))
def test_gantryd_unreadable_values_give_an_error_naming_the_key(gd, which, capsys,
                                                                 docker_client):
    gd.seed()
    key = {"config": gd.store.keys.config, "desired": gd.store.keys.desired("web"),
           "machine": gd.store.keys.machine("web", "h9")}[which]
    for value in BAD_VALUES[which]:
        gd.etcd.put(key, value)
        before = gd.keyspace()
        for command in READERS[which]:
            args = [command[0], gd.project, *command[1:]]
            if command[0] == "wait":
                args += ["--timeout", "5"]
            rc, _, err = gd.main(capsys, *args)
            assert rc == 1, (value, command, rc, err)
            _clear_error(err, key)
        assert gd.keyspace() == before, value  # nothing read was written back
    # The real command line too (a subprocess: exit status, stderr, no traceback).
    command, *rest = READERS[which][-1]
    out = gd.run(command, gd.project, *rest, *(["--timeout", "5"] if command == "wait" else []))
    assert out.returncode == 1
    _clear_error(out, f"gantryd: {key}: ")
    assert _project_containers(docker_client, gd.project) == []


@settings(FUZZ, max_examples=60)
@given(config=valid_configs(), data=st.data())
def test_invalid_config_files_change_nothing(gd, tmp_path, capsys, docker_client,
                                             no_sigterm_handler, config, data):
    """`gantryd setconfig` and `gantry update` with a mutated config file: exit 2 with the
    loader's error text (file and path), etcd and Docker untouched, no proxy started."""
    if not gd.keyspace():
        gd.seed()
    before = gd.keyspace()
    mutated = mutate(config, data)
    suffix = data.draw(st.sampled_from([".json", ".gantry", ".yml"]))
    path = tmp_path / f"c{uuid.uuid4().hex[:6]}{suffix}"
    if suffix == ".yml":
        try:
            path.write_text(yaml.safe_dump(mutated))
        except (ValueError, yaml.YAMLError):
            assume(False)
    else:
        path.write_text(json.dumps(mutated))
    try:
        load_config(path)
        assume(False)  # the mutation left it valid
    except ConfigError as exc:
        expected = str(exc)
    assert str(path) in expected

    rc, _, err = gd.main(capsys, "setconfig", gd.project, str(path))
    assert rc == 2 and expected in err and "Configuration not stored." in err

    socket_path = tmp_path / "proxy.sock"
    name = config["components"][0]["name"]
    rc = _gantry_main(["-f", str(path), "-p", gd.project, "--proxy-socket", str(socket_path),
                       "update", name])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err

    assert gd.keyspace() == before
    assert _project_containers(docker_client, gd.project) == []
    assert not socket_path.exists()  # no proxy was started either


def _gantry_main(argv: list[str]) -> int:
    from gantry import cli as gantry_cli
    return gantry_cli.main(argv)


@pytest.fixture
def no_sigterm_handler():
    """gantry.cli.main installs a SIGTERM handler; put pytest's back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


# --- a running daemon ------------------------------------------------------------------------

@pytest.fixture
def daemon_fleet(etcd, project, docker_client, test_images):
    yield from fleet_helpers._fleet(etcd.endpoints, project)


def test_gantryd_run_without_config_then_unreadable_desired_state(daemon_fleet, test_images):
    fleet = daemon_fleet
    log = fleet.host_dir("h1") / "gantryd.log"
    fleet.start("h1")  # no config yet: it waits (hosts may start before the first setconfig)
    assert f"project {fleet.project} has no configuration yet" in log.read_text()
    assert fleet.status("h1").status == "idle"

    fleet.setconfig(fleet_helpers.component(test_images, "v1", fleet.port))
    fleet.update()
    fleet.wait_done()
    assert fleet.answers("h1") == "v1"

    key = fleet.store.keys.desired("web")
    good = fleet.etcd.get(key).value
    for value in (b"\xff garbage", b'{"status": "ready"}'):
        mark = len(log.read_bytes())
        fleet.etcd.put(key, value)
        fleet_helpers.wait_for(
            lambda mark=mark: key in log.read_bytes()[mark:].decode(errors="replace"),
            20, f"the daemon to report the unreadable {key}\n{fleet.logs()}")
        assert fleet.procs["h1"].poll() is None, fleet.logs()
        assert fleet.answers("h1") == "v1"  # its container keeps serving through its proxy
    mark = len(log.read_bytes())
    fleet.etcd.put(key, good)
    fleet.wait_done()
    fleet_helpers.wait_for(lambda: "back to normal" in log.read_text()[mark:], 20,
                           "the daemon to recover")
    assert "Traceback" not in log.read_text(), fleet.logs()
    assert fleet.answers("h1") == "v1"


# =============================================================================================
# 3. gantry (one host): missing file, unknown component, config with errors
# =============================================================================================

def test_gantry_cli_bad_input_touches_nothing(tmp_path, project, docker_client):
    socket_path = tmp_path / "run" / "proxy.sock"
    env = dict(os.environ, GANTRY_PROXY_SOCKET=str(socket_path),
               GANTRY_PROXY_STATE=str(tmp_path / "state.json"),
               GANTRY_LOCK_DIR=str(tmp_path / "locks"))

    def gantry(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gantry", "-p", project, *args],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)

    missing = tmp_path / "missing.gantry"
    out = gantry("-f", str(missing), "update", "web")
    assert out.returncode == 2
    _clear_error(out, f"{missing}: file not found")
    out = gantry("update", "web")  # the default ./.gantry
    assert out.returncode == 2
    _clear_error(out, ".gantry: file not found")

    good = tmp_path / "good.gantry"
    good.write_text(json.dumps({"components": [fleet_helpers.component(IMAGES)]}))
    for command in ("update", "start", "stop", "kill", "monitor", "list"):
        out = gantry("-f", str(good), command, "wbe")
        assert out.returncode == 2, (command, out)
        _clear_error(out, 'no component named "wbe"; did you mean "web"?')

    bad = tmp_path / "bad.gantry"
    web = fleet_helpers.component(IMAGES)
    web["ports"][0]["external"] = "80a"
    bad.write_text(json.dumps({"components": [dict(web, readyTimout=3, privileged="false")]}))
    out = gantry("-f", str(bad), "update", "web")
    assert out.returncode == 2
    _clear_error(out, f'{bad}: components[0].ports[0].external: expected an integer port',
                 f"{bad}: components[0].readyTimout:", 'did you mean "readyTimeout"',
                 f"{bad}: components[0].privileged: expected true or false")

    assert _project_containers(docker_client, project) == []
    assert not socket_path.exists()  # no proxy was started
