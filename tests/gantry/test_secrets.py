"""Secrets (`valueFrom`) on one host: read when a container is created, never stored or shown.

The config model and gantry/secret_env.py directly, then the gantry CLI end to end against the
real dockerd and proxy (the test app's /cgi-bin/env answers the container's environment).
"""
from __future__ import annotations

import json
import os
import secrets as random

import pytest

from gantry import secret_env
from gantry.config import ConfigError, parse_config
from gantry_helpers import component_dict, project_containers
from loadgen import request

VAR = "GANTRY_TEST_API_TOKEN"  # the gantry process's variable API_TOKEN is read from


def _component(**extra):
    return parse_config({"components": [{"name": "web", "repo": "r", **extra}]}).components[0]


def _env(*variables):
    return _component(environmentVariables=list(variables))


def test_config_takes_a_reference_exactly_one_way():
    file_ref = {"name": "DB", "valueFrom": {"file": "/etc/app/db"}}
    c = _env(file_ref, {"name": "MODE", "value": "prod"})
    # Only the reference is stored and hashed; a plain variable's dict is what it always was.
    assert c.to_dict()["environmentVariables"] == [file_ref, {"name": "MODE", "value": "prod"}]
    assert c.env_dict() == {"MODE": "prod"}
    assert c.spec_hash() != _env({"name": "DB", "valueFrom": {"file": "/etc/app/other"}},
                                 {"name": "MODE", "value": "prod"}).spec_hash()
    assert parse_config({"components": [c.to_dict() | {"name": "web"}]}).components[0] == c
    bad = {
        "value": 'value: missing (expected a string (quote numbers and booleans), or '
                 '"valueFrom")',
        "both": 'valueFrom: give either "value" or "valueFrom", not both',
        "neither": 'valueFrom.file: missing (expected an absolute path (starting with "/", '
                   'without ":"), or "env")',
        "relative": 'valueFrom.file: expected an absolute path',
        "two": 'valueFrom.env: give either "file" or "env", not both',
    }
    cases = {"value": {}, "both": {"value": "x", "valueFrom": {"env": "X"}},
             "neither": {"valueFrom": {}}, "relative": {"valueFrom": {"file": "etc/db"}},
             "two": {"valueFrom": {"file": "/etc/db", "env": "X"}}}
    for case, fields in cases.items():
        with pytest.raises(ConfigError) as err:
            _env({"name": "DB", **fields})
        assert f"components[0].environmentVariables[0].{bad[case]}" in str(err.value), case


def test_reading_values_on_the_host(tmp_path, monkeypatch):
    path = tmp_path / "db"
    path.write_text("s3cret-value\n")
    monkeypatch.setenv(VAR, "tok-1234")
    c = _env({"name": "DB", "valueFrom": {"file": str(path)}},
             {"name": "TOKEN", "valueFrom": {"env": VAR}}, {"name": "MODE", "value": "prod"})
    resolved = secret_env.resolve(c)
    assert resolved.env == {"DB": "s3cret-value", "TOKEN": "tok-1234", "MODE": "prod"}
    label = resolved.label()
    assert "s3cret" not in label and "tok-1234" not in label and "s3cret" not in repr(resolved)
    assert not secret_env.changed(c, label)
    assert secret_env.changed(c, "") and secret_env.changed(c, "zz:00")
    assert resolved.label() != label  # salted: equal values, other digests
    path.write_text("rotated")
    assert secret_env.changed(c, label)
    assert secret_env.redact("output: rotated and tok-1234", c) == "output: *** and ***"

    problems = {b"\x00x": "holds a NUL byte", b"\xff": "not UTF-8 text",
                b"x" * (secret_env.MAX_BYTES + 1): "longer than"}
    for content, what in problems.items():
        path.write_bytes(content)
        with pytest.raises(secret_env.SecretError, match=what):
            secret_env.resolve(c)
    path.unlink()
    os.mkfifo(path)  # nothing writes to it: reading must not wait
    with pytest.raises(secret_env.SecretError, match="not a regular file"):
        secret_env.resolve(c)
    path.unlink()
    monkeypatch.delenv(VAR)
    with pytest.raises(secret_env.SecretError) as err:
        secret_env.resolve(c, "gantryd")
    assert str(err.value) == (
        f"environment variable DB: valueFrom file {path}: cannot read it (No such file or "
        f"directory); environment variable TOKEN: valueFrom env {VAR} is not set in the "
        f"environment of gantryd run (pid {os.getpid()})")
    assert secret_env.changed(c, label)  # unreadable: a new container must say why


def test_secrets_end_to_end(cli, docker_client, project, tmp_path):
    db, token = f"db-{random.token_hex(12)}", f"tok-{random.token_hex(12)}"
    secret = tmp_path / "db_password"
    secret.write_text(db + "\n")
    web = component_dict(tag="v1", environmentVariables=[
        {"name": "DB_PASSWORD", "valueFrom": {"file": str(secret)}},
        {"name": "API_TOKEN", "valueFrom": {"env": VAR}},
        {"name": "MODE", "value": "prod"}])
    cli.write_config(web)
    where = ("127.0.0.1", web["ports"][0]["external"])
    outputs = []

    def run(*args, **env):
        proc = cli.run(*args, **{VAR: token, **env})
        outputs.append(f"$ gantry {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return proc

    def app_env():
        ok, body = request(where, "/cgi-bin/env")
        assert ok, body
        return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)

    done = run("update", "web", "-vv")  # debug logging on: nothing may quote the values
    assert done.returncode == 0, done.stderr
    seen = app_env()
    assert (seen["DB_PASSWORD"], seen["API_TOKEN"], seen["MODE"]) == (db, token, "prod")
    first_hash = json.loads(run("list", "--json").stdout)["web"][0]["configHash"]
    assert "nothing to do" in run("start", "web").stdout

    # A rotated file: `gantry update` reads it again; so does `start` (the label's digest).
    rotated = f"db-{random.token_hex(12)}"
    secret.write_text(rotated)
    assert run("update", "web").returncode == 0
    assert app_env()["DB_PASSWORD"] == rotated
    again = f"db-{random.token_hex(12)}"
    secret.write_text(again)
    started = run("start", "web")
    assert started.returncode == 0 and "a valueFrom value changed" in started.stdout, \
        started.stdout
    assert app_env()["DB_PASSWORD"] == again
    listed = json.loads(run("list", "--json").stdout)["web"]
    assert [c["configHash"] for c in listed] == [first_hash]  # the values are not config

    # A missing file or variable fails the update clearly; the old container keeps serving.
    secret.unlink()
    (before,) = project_containers(docker_client, project)
    failed = run("update", "web")
    assert failed.returncode == 1
    assert f"DB_PASSWORD: valueFrom file {secret}: cannot read it (No such file or " \
           f"directory)" in failed.stderr
    assert "keeps serving" in failed.stderr
    assert [c.id for c in project_containers(docker_client, project)] == [before.id]
    assert app_env()["DB_PASSWORD"] == again
    secret.write_text(again)
    failed = cli.run("update", "web")  # without the variable in gantry's environment
    assert failed.returncode == 1 and f"valueFrom env {VAR} is not set" in failed.stderr
    outputs.append(failed.stdout + failed.stderr)

    # A container that prints its environment and exits: the message quoting its output
    # hides the value.
    cli.write_config({**web, "command": ["sh", "-c", "echo DB_PASSWORD=$DB_PASSWORD; exit 3"]})
    crashed = run("update", "web")
    assert crashed.returncode == 1 and "last output: DB_PASSWORD=***" in crashed.stderr, \
        crashed.stderr

    labels = [c.labels for c in project_containers(docker_client, project)]
    assert labels and all(lab.get("io.gantry.secrets") for lab in labels)
    everything = "\n".join(outputs) + json.dumps(labels)
    for value in (db, rotated, again, token):
        assert value not in everything
