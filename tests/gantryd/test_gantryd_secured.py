"""gantryd against a secured etcd, end to end: TLS with client certificates (etcd takes the
CN as the user), users whose role is limited to the key prefix, passwords over TLS and over
a plain listener, auth tokens that expire under running daemons; and every way of getting
it wrong gives one clear line, exit 1, and writes nothing. The password never shows in the
process list, the logs or an error.

Two single-member etcds per module (cheap: ~2 s with auth set up): one requiring client
certificates, one serving TLS without them plus a plain listener, with a 2 s token TTL.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import rig
from fleet_helpers import ROOT, component, open_fleet, wait_for
from gantryd import etcd as E
from gantryd import etcd_gateway as G
from rig_certs import Certs, make_certs

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"  # unique: looked for in ps, logs and errors
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex[:12]}"
TOKEN_TTL = 2  # etcd --auth-token-ttl, seconds (its resolution is 1 s)


@dataclass
class Secured:
    certs: Certs
    by_cert: rig.EtcdCluster  # TLS; client certificates required, the CN is the user
    by_password: rig.EtcdCluster  # TLS without client certificates + a plain listener

    def cert_options(self, user: str = "gantry", ca: str | None = None) -> list[str]:
        return ["--ca-cert", ca or self.certs.ca, "--cert", self.certs.cert(user),
                "--key", self.certs.key(user)]

    def password_credentials(self, user: str = "gantry") -> E.Credentials:
        return E.Credentials(ca_cert=self.certs.ca, user=user, password=PASSWORD)

    def revisions(self) -> tuple[int, int]:
        """The store revision of both etcds (read as gantry: reading writes nothing)."""
        certs = self.certs
        by_cert = E.Etcd(self.by_cert.endpoints, E.Credentials(
            ca_cert=certs.ca, cert_cert=certs.cert("gantry"), cert_key=certs.key("gantry")),
            revision_key="/gantryd/")
        by_password = E.Etcd(self.by_password.endpoints, self.password_credentials(),
                             revision_key="/gantryd/")
        try:
            return by_cert.revision(), by_password.revision()
        finally:
            by_cert.close()
            by_password.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Secured:
    certs = make_certs(tmp_path_factory.mktemp("certs"), clients=("root", "gantry", "reader"))
    by_cert = rig.EtcdCluster(tls=certs, client_cert_auth=True)
    by_password = rig.EtcdCluster(tls=certs, plain_listener=True,
                                  extra_args=("--auth-token-ttl", str(TOKEN_TTL)))
    users = {"gantry": (PASSWORD, "/gantryd/"), "reader": (PASSWORD, None)}
    try:
        for cluster in (by_cert, by_password):
            cluster.start().enable_auth(f"root-{PASSWORD}", users)
        yield Secured(certs, by_cert, by_password)
    finally:
        by_cert.stop()
        by_password.stop()


def gantryd(endpoints: list[str], *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen:
    """Start the gantryd CLI (stdout and stderr piped)."""
    argv = [sys.executable, "-m", "gantryd", "--etcd", ",".join(endpoints), *args]
    return subprocess.Popen(argv, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**_clean_env(), **(env or {})})


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GANTRYD_")}


def test_fleet_through_client_certificates(secured, project, docker_client, test_images):
    """setconfig, update, run, wait and list, all through TLS with client certificates."""
    certs = secured.certs
    credentials = E.Credentials(ca_cert=certs.ca, cert_cert=certs.cert("gantry"),
                                cert_key=certs.key("gantry"))
    with open_fleet(secured.by_cert.endpoints, project, options=secured.cert_options(),
                    credentials=credentials) as fleet:
        fleet.deploy_v1(test_images, hosts=("h1",))
        listing = fleet.cli("list", project).stdout
        assert any(line.split()[:3] == ["h1", "web", "ready"] for line in listing.splitlines()
                   if line.strip()), listing


def _token_expired(secured: Secured) -> None:
    """Wait until an auth token left unused for a while is refused (so the daemons', idle as
    long, expired too)."""
    probe = E.Etcd(secured.by_password.endpoints, secured.password_credentials())
    client, _ = probe.current()

    def refused() -> bool:
        try:
            client.call("/v3/kv/range", {"key": E.b64("/gantryd/")})
            return False  # (this use renews the token: the next look comes after its TTL)
        except G.Refused as exc:
            return "invalid auth token" in exc.message
    try:
        wait_for(refused, 20, "an idle auth token to expire", interval=TOKEN_TTL + 1.5)
    finally:
        probe.close()


def test_passwords_and_expiring_tokens(secured, project, docker_client, test_images, tmp_path):
    """Daemons with a password (h1: TLS, password in the environment; h2: the plain
    listener, password in a file) keep working after their tokens expired; the password
    is in no command line, log or error, nor in the environment of the proxies they start."""
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    by_file = ["--user", "gantry", "--password-file", str(password_file)]
    tls = ["--ca-cert", secured.certs.ca]
    with open_fleet(secured.by_password.endpoints, project, options=tls + by_file,
                    credentials=secured.password_credentials()) as fleet:
        fleet.setconfig(component(test_images, "v1", fleet.port))
        fleet.update()
        fleet.env = {"GANTRYD_ETCD_PASSWORD": PASSWORD}
        fleet.start("h1", options=tls + ["--user", "gantry"])
        fleet.env = {}
        fleet.start("h2", endpoints=secured.by_password.plain_endpoints, options=by_file)
        fleet.wait_done()
        assert {fleet.answers(h) for h in ("h1", "h2")} == {"v1"}

        for name, proc in fleet.procs.items():
            assert PASSWORD not in Path(f"/proc/{proc.pid}/cmdline").read_text(), name
            proxy_pid = fleet._proxy_pid(fleet.host_dir(name))
            assert proxy_pid and PASSWORD not in Path(f"/proc/{proxy_pid}/environ").read_text()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert PASSWORD not in ps

        _token_expired(secured)  # the daemons were idle as long: theirs expired too
        fleet.setconfig(component(test_images, "v2", fleet.port))
        fleet.update()
        fleet.wait_done()
        assert {fleet.answers(h) for h in ("h1", "h2")} == {"v2"}
        rows = [line.split()[:3] for line in fleet.cli("list", project).stdout.splitlines()]
        assert ["h1", "web", "ready"] in rows and ["h2", "web", "ready"] in rows, rows
        for name in ("h1", "h2"):
            log = (fleet.host_dir(name) / "gantryd.log").read_text()
            assert "auth token expired; authenticating again" in log, fleet.logs()
            assert PASSWORD not in log


# name -> (which etcd, connection options, env, expected in the one line)
def _mistakes(s: Secured) -> dict[str, tuple[list[str], list[str], dict[str, str], str]]:
    cert, pw, plain = s.by_cert.endpoints, s.by_password.endpoints, s.by_password.plain_endpoints
    ca, user = ["--ca-cert", s.certs.ca], ["--user", "gantry"]
    good = {"GANTRYD_ETCD_PASSWORD": PASSWORD}
    return {
        "wrong client cert": (cert, s.cert_options("stranger"), {},
                              "TLS: the server refused the client certificate"),
        "wrong CA": (cert, s.cert_options(ca=s.certs.wrong_ca), {},
                     "TLS: the server's certificate is not signed by the CA of --ca-cert"),
        "no client cert": (cert, ca, {}, "TLS: the server refused the client certificate"),
        "key of another cert": (cert, ca + ["--cert", s.certs.cert("gantry"),
                                            "--key", s.certs.key("reader")], {},
                                "TLS: the certificate files cannot be used"),
        "TLS to a plain listener": (plain, ca + user, good, "does the endpoint serve TLS?"),
        "cert without rights": (
            cert, s.cert_options("reader"), {},
            "permission denied for the user named by the client certificate's CN (its role "
            "needs readwrite on the prefix /gantryd/)"),
        "wrong password": (pw, ca + user, {"GANTRYD_ETCD_PASSWORD": WRONG_PASSWORD},
                           "authentication of user 'gantry' failed: authentication failed, "
                           "invalid user ID or password"),
        "password without rights": (
            pw, ca + ["--user", "reader"], good,
            "permission denied for user 'reader' (its role needs readwrite on the prefix "
            "/gantryd/)"),
        "no user": (plain, [], {}, "authentication is enabled"),
        "plain to a TLS listener": (pw, user, good, "does the endpoint require TLS (--ca-cert)?"),
    }


TLS_MISTAKES = ("wrong client cert", "wrong CA", "no client cert", "key of another cert",
                "TLS to a plain listener")
AUTH_MISTAKES = ("cert without rights", "wrong password", "password without rights", "no user",
                 "plain to a TLS listener")


def _commands(project: str, tmp_path: Path) -> dict[str, list[str]]:
    """The commands tried with a mistake: `setconfig` with every one, these with some."""
    machine = ["--machine", "h9", "--proxy-socket", str(tmp_path / "p.sock")]
    return {"run": ["run", project, "-c", "web", *machine],
            "update": ["update", project, "-c", "web"], "list": ["list", project],
            "wait": ["wait", project, "-c", "web", "--timeout", "5"]}


def _setconfig(project: str, tmp_path: Path) -> list[str]:
    config = tmp_path / "config.json"
    config.write_text('{"components": [{"name": "web", "repo": "localhost:5000/x/app"}]}')
    return ["setconfig", project, str(config)]


def _one_clear_line(what: str, code: int, out: str, err: str, expected: str) -> str | None:
    """What is wrong with a refused command's outcome (None: exit 1, one line, no secret)."""
    lines = err.strip().splitlines()
    if code != 1 or len(lines) != 1 or expected not in lines[0] \
            or not lines[0].startswith("gantryd: ") or PASSWORD in err + out \
            or WRONG_PASSWORD in err + out:
        return f"{what}: exit {code}\n{out}{err}"
    return None


def test_tls_mistakes_print_one_line(secured, project, tmp_path):
    """Wrong client certificate, wrong CA, none, a key that is not the certificate's, TLS
    against a plain listener: exit 1 with one line from gantryd (none of gRPC's own C-core
    lines, no traceback), nothing written. Real processes (the C core writes to the
    process's stderr), run side by side."""
    before = secured.revisions()
    mistakes = _mistakes(secured)
    tries = [(name, _setconfig(project, tmp_path)) for name in TLS_MISTAKES]
    tries += [("wrong CA", command) for command in _commands(project, tmp_path).values()]
    runs = []
    for name, command in tries:
        endpoints, options, env, _ = mistakes[name]
        runs.append((name, command[0], gantryd(endpoints, *options, *command, env=env)))
    problems = []
    for name, command, proc in runs:
        out, err = proc.communicate(timeout=120)
        problems.append(_one_clear_line(f"{name} / {command}", proc.returncode, out, err,
                                        mistakes[name][3]))
    assert not any(problems), "\n\n".join(filter(None, problems))
    assert secured.revisions() == before


def test_auth_mistakes_print_one_line(secured, project, tmp_path, capsys, monkeypatch):
    """A user without rights on the prefix (by certificate or password), a wrong password,
    no user, no TLS against TLS: exit 1 with one clear line, nothing written (in-process:
    the same main() as the program, without a process start each)."""
    from gantryd.cli import main
    for name in list(os.environ):
        if name.startswith("GANTRYD_"):
            monkeypatch.delenv(name)
    before = secured.revisions()
    mistakes = _mistakes(secured)
    tries = [(name, _setconfig(project, tmp_path)) for name in AUTH_MISTAKES]
    tries += [("password without rights", command)
              for command in _commands(project, tmp_path).values()]
    problems = []
    for name, command in tries:
        endpoints, options, env, expected = mistakes[name]
        for key, value in env.items():
            monkeypatch.setenv(key, value)  # (main takes the password out of the environment)
        code = main(["--etcd", ",".join(endpoints), *options, *command])
        out, err = capsys.readouterr()
        problems.append(_one_clear_line(f"{name} / {command[0]}", code, out, err, expected))
    assert not any(problems), "\n\n".join(filter(None, problems))
    assert secured.revisions() == before

    # --password works too, with a warning: it shows in the process list.
    endpoints = secured.by_password.endpoints
    assert main(["--etcd", endpoints[0], "--ca-cert", secured.certs.ca, "--user", "gantry",
                 "--password", PASSWORD, *_setconfig(project, tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "gantryd: warning: --password shows in the process list; use --password-file or env "
        "GANTRYD_ETCD_PASSWORD"] and out == "Configuration updated\n"


def test_failover_authenticates_on_each_member(secured):
    """Tokens belong to the member that issued them: after its member dies, a client with a
    password goes on with the next member (authenticating there) over TLS. (The one
    3-member cluster here: the other tests need no failover, and one member starts faster.)
    The member killed is a follower: no leader election to wait for."""
    certs = secured.certs
    cluster = rig.EtcdCluster(size=3, tls=certs).start()
    try:
        cluster.enable_auth(f"root-{PASSWORD}", {"gantry": (PASSWORD, "/gantryd/")})
        follower = (cluster.leader() + 1) % 3
        endpoints = cluster.endpoints[follower:] + cluster.endpoints[:follower]
        client = E.Etcd(endpoints, E.Credentials(ca_cert=certs.ca, user="gantry",
                                                 password=PASSWORD))
        try:
            client.put("/gantryd/a", b"1")
            assert client.current()[1] == E.Endpoint.parse(cluster.endpoints[follower])
            cluster.kill(follower)
            client.put("/gantryd/b", b"2")
            assert client.current()[1] != E.Endpoint.parse(cluster.endpoints[follower])
            assert [kv.key for kv in client.get_prefix("/gantryd/")[0]] == ["/gantryd/a",
                                                                            "/gantryd/b"]
        finally:
            client.close()
    finally:
        for index in range(3):  # a graceful stop with a member gone takes seconds (~7 s)
            cluster.kill(index)
        cluster.stop()


class _Hangup:
    """A listener that accepts and closes at once (as a plain one may do to a TLS hello)."""

    def __init__(self, reset: bool):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reset = reset
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.reset:  # RST instead of FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.recv(1)
            conn.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_hang_up_during_the_tls_handshake_asks_whether_the_endpoint_serves_tls(
        reset, secured):
    """A listener that hangs up on a TLS hello (closed or reset) gets the question whether
    the endpoint serves TLS, not the socket's own words (gRPC worded it "Handshake read
    failed" once in CI); without TLS, the same hang-up asks whether it requires TLS."""
    listener = _Hangup(reset)
    try:
        tls = E.Etcd([f"127.0.0.1:{listener.port}"], E.Credentials(ca_cert=secured.certs.ca))
        with pytest.raises(E.EtcdHandshakeFailed, match="does the endpoint serve TLS"):
            tls.get("/x")
        plain = E.Etcd([f"127.0.0.1:{listener.port}"])
        with pytest.raises(E.EtcdUnavailable, match="does the endpoint require TLS"):
            plain.get("/x")
    finally:
        listener.sock.close()
