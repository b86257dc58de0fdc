"""gantry's own Docker Engine API client (gantry.engine, gantry.registry_auth): what it sends
is what the Docker SDK sent before it; where the engine is, and credentials, are found as the
docker CLI finds them; every failure is one clear line. The real engine is exercised by every
lifecycle test; these pin the details."""
from __future__ import annotations

import base64
import json
import os
import socket
import threading

import docker
import pytest
from docker.auth import resolve_repository_name
from docker.models.containers import _create_container_args
from docker.utils import parse_repository_tag

from gantry import registry_auth
from gantry.engine import Engine, Unreachable
from gantry.errors import DockerUnavailable
from gantry.registry_auth import CredentialsError
from gantry.runtime import Runtime, connect


def _meaningful(value):
    """A config without the empty and default entries either side leaves out."""
    if isinstance(value, dict):
        kept = {k: _meaningful(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, False, {}, [], "")}
    return value


@pytest.mark.parametrize("mode", ["loopback", "container-ip"])
@pytest.mark.parametrize("extra", [
    {},
    {"command": ["serve", "--port", "8080"], "user": "1000:1000",
     "environment": {"A": "1", "B": "x=y"}, "privileged": True},
    {"binds": {"/srv/data": {"bind": "/data", "mode": "ro"},
               "/srv/logs": {"bind": "/logs", "mode": "rw"}},
     "volumes_from": ["sidecar"]},
])
def test_the_create_body_is_what_the_docker_sdk_sent(mode, extra):
    labels = {"io.gantry.project": "p", "io.gantry.component": "web"}
    image = "localhost:5000/app@sha256:" + "a" * 64
    ours = Runtime(client=None, backend_mode=mode).create_body(  # type: ignore[arg-type]
        image, labels, tcp_ports=[8080, 9000, 8080], **extra)
    # The SDK's own rendering of what Runtime.create passed it before.
    kwargs = dict(image=image, name="n", labels=labels,
                  environment=extra.get("environment") or {}, volumes=extra.get("binds") or {},
                  privileged=extra.get("privileged", False), detach=True, version="1.41",
                  command=extra.get("command"))
    for key in ("user", "volumes_from"):
        if key in extra:
            kwargs[key] = extra[key]
    if mode == "loopback":
        kwargs["ports"] = {f"{p}/tcp": ("127.0.0.1", None) for p in (8080, 9000)}
    sdk_args = _create_container_args(kwargs)
    sdk_args.pop("name")
    sdk = docker.APIClient(base_url="unix:///nowhere", version="1.41")
    assert _meaningful(ours) == _meaningful(sdk.create_container_config(**sdk_args))


@pytest.mark.parametrize("ref", [
    "web", "web:v1", "library/web:v1", "user/web", "localhost/web:v1", "localhost:5000/a/b:c",
    "registry.example.com/team/app@sha256:" + "b" * 64, "index.docker.io/library/web:1",
    "my.registry:5000/app", "host:5000/app:1.2",
])
def test_references_split_and_name_their_registry_as_the_docker_sdk_does(ref):
    assert registry_auth.split_reference(ref) == parse_repository_tag(ref)
    expected = resolve_repository_name(parse_repository_tag(ref)[0])[0]
    assert registry_auth.registry_of(ref) == expected


def _config(tmp_path, monkeypatch, data) -> None:
    (tmp_path / "config.json").write_text(json.dumps(data))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def _decoded(header):
    return json.loads(base64.urlsafe_b64decode(header))


def test_credentials_from_the_docker_config(tmp_path, monkeypatch):
    auth = base64.b64encode(b"me:pa:ss").decode()
    _config(tmp_path, monkeypatch, {"auths": {
        "reg.example:5000": {"auth": auth},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:secret").decode()},
        "tokens.example": {"identitytoken": "tok"},
        "stored.example": {},
    }})
    assert _decoded(registry_auth.header("reg.example:5000/app:1")) == {
        "username": "me", "password": "pa:ss", "serveraddress": "reg.example:5000"}
    assert _decoded(registry_auth.header("library/web"))["username"] == "hub"
    assert _decoded(registry_auth.header("tokens.example/app")) == {"IdentityToken": "tok"}
    assert registry_auth.header("stored.example/app") is None  # kept by a store: none here
    assert registry_auth.header("other.example/app") is None  # anonymous
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    assert registry_auth.header("reg.example:5000/app:1") is None


def _helper(bin_dir, monkeypatch, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "docker-credential-fake"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_credential_helpers_and_their_failures(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "fake"},
                                    "auths": {"reg.example": {"auth": "bWU6cHc="}}})
    _helper(tmp_path / "bin", monkeypatch, 'read s; printf \'{"Username":"u","Secret":"%s"}\' '
                                           '"$s"\n')
    assert _decoded(registry_auth.header("reg.example/app")) == {
        "Username": "u", "Password": "reg.example", "ServerAddress": "reg.example"}
    # Docker Hub is asked for by its index URL, and a <token> user means an identity token.
    _config(tmp_path, monkeypatch, {"credsStore": "fake"})
    _helper(tmp_path / "bin", monkeypatch, 'read s; printf \'{"Username":"<token>",'
                                           '"Secret":"%s"}\' "$s"\n')
    assert _decoded(registry_auth.header("web:1")) == {
        "IdentityToken": registry_auth.INDEX_URL, "ServerAddress": registry_auth.INDEX_URL}
    # Not found in the helper: the auths entry, else anonymous.
    _config(tmp_path, monkeypatch, {"credsStore": "fake",
                                    "auths": {"reg.example": {"auth": "bWU6cHc="}}})
    _helper(tmp_path / "bin", monkeypatch, 'echo "credentials not found in native keychain"; '
                                           'exit 1\n')
    assert _decoded(registry_auth.header("reg.example/app"))["username"] == "me"
    assert registry_auth.header("else.example/app") is None
    for script, says in (("echo 'keychain locked' >&2; exit 3\n",
                          "docker-credential-fake failed: keychain locked"),
                         ("echo not json\n", "docker-credential-fake answered no credentials")):
        _helper(tmp_path / "bin", monkeypatch, script)
        with pytest.raises(CredentialsError, match=says):
            registry_auth.header("reg.example/app")
    (tmp_path / "bin" / "docker-credential-fake").unlink()
    with pytest.raises(CredentialsError, match="is not installed or not in PATH"):
        registry_auth.header("reg.example/app")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="cannot read the Docker config"):
        registry_auth.header("reg.example/app")


@pytest.mark.parametrize("url, says", [
    ("ssh://host", "expected unix://, tcp://, http:// or https://"),
    ("unix:///nonexistent/docker.sock", "No such file or directory"),
    ("tcp://127.0.0.1:1", "Connection refused"),
])
def test_an_engine_that_cannot_be_reached_is_one_line(url, says):
    with pytest.raises(DockerUnavailable) as info:
        connect(url, timeout=5)
    message = str(info.value)
    assert message.startswith(f"cannot reach the Docker engine at {url}: ") and says in message
    assert "\n" not in message


def test_docker_host_is_read_as_the_docker_cli_reads_it(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    assert Engine().base_url == "tcp://127.0.0.1:1"
    assert Engine("unix:///x.sock").base_url == "unix:///x.sock"  # --docker-url wins
    monkeypatch.delenv("DOCKER_HOST")
    assert Engine().base_url == "unix:///var/run/docker.sock"


def test_an_engine_that_stops_answering_mid_stream_ends_the_stream(tmp_path):
    """A fake engine that answers the version, starts an event stream and dies: the stream
    ends, it does not hang; a stream closed from another thread just ends."""
    path = str(tmp_path / "engine.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    streams = []

    def handle(conn: socket.socket) -> None:
        with conn:
            while request := conn.recv(65536).decode():
                if request.startswith("GET /_ping"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nAPI-Version: 1.41\r\n"
                                 b"Content-Length: 2\r\n\r\nOK")
                    continue
                assert request.startswith("GET /v1.41/events?filters="), request
                streams.append(conn)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"
                             b"e\r\n{\"Action\": 1}\n\r\n")
                if len(streams) == 1:
                    return  # the engine dies mid-stream
                # else: wait for the client to hang up

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    engine = Engine(f"unix://{path}", timeout=5)
    events = engine.events({"type": ["container"]})
    seen = []
    try:
        for event in events:
            seen.append(event)
    except Unreachable:
        pass  # (http.client may also end a cut chunked answer quietly)
    assert seen == [{"Action": 1}]
    stream = engine.events({})
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    threading.Event().wait(0.2)
    stream.close()
    reader.join(5)
    assert not reader.is_alive() and got == [{"Action": 1}]
    server.close()
