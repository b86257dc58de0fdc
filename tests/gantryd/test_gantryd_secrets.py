"""Secrets (`valueFrom`) across the fleet: only the reference reaches etcd; each host reads the
value when it creates a container; a rotated secret rolls out with the next `gantryd update`;
a host that cannot read it fails clearly and halts the rollout, the old version serving."""
from __future__ import annotations

import json
import secrets as random
from dataclasses import replace

from fleet_helpers import component, containers, wait_for
from gantryd import rollout as R
from gantryd.store import Desired, Halt

VAR = "GANTRY_TEST_API_TOKEN"  # in the environment of each `gantryd run`


def test_secrets_across_the_fleet(fleet, test_images, docker_client):
    db, token = f"db-{random.token_hex(12)}", f"tok-{random.token_hex(12)}"
    secret = fleet.base / "db_password"
    secret.write_text(db + "\n")
    fleet.env = {VAR: token}
    outputs = []

    def cli(*args: str, check: bool = True):
        proc = fleet.cli(*args, check=check)
        outputs.append(f"$ gantryd {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return proc

    def app_env(host: str) -> dict[str, str]:
        body = fleet.answers(host, "/cgi-bin/env")
        return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)

    fleet.setconfig(component(test_images, "v1", fleet.port, environmentVariables=[
        {"name": "DB_PASSWORD", "valueFrom": {"file": str(secret)}},
        {"name": "API_TOKEN", "valueFrom": {"env": VAR}}]))
    fleet.update()
    fleet.start("h1")
    fleet.start("h2")
    fleet.wait_done()
    for host in ("h1", "h2"):
        assert (app_env(host)["DB_PASSWORD"], app_env(host)["API_TOKEN"]) == (db, token)
    first = fleet.store.desired("web")

    # Rotated on the hosts: the next update (same image, same config) replaces the containers.
    rotated = f"db-{random.token_hex(12)}"
    secret.write_text(rotated)
    # Not on its own: h1 goes through a reconcile (frozen, then catching up) and keeps its
    # container until the update says so.
    before = containers(docker_client, fleet.project, "h1")
    cli("freeze", fleet.project, "-c", "web", "--machine", "h1")
    wait_for(lambda: fleet.status("h1").status == "frozen", 15, "h1 frozen")
    cli("unfreeze", fleet.project, "-c", "web", "--machine", "h1")
    wait_for(lambda: fleet.status("h1").status == "ready", 15, "h1 back")
    assert containers(docker_client, fleet.project, "h1") == before
    assert {app_env(h)["DB_PASSWORD"] for h in ("h1", "h2")} == {db}
    fleet.update()
    fleet.wait_done()
    assert {app_env(h)["DB_PASSWORD"] for h in ("h1", "h2")} == {rotated}
    second = fleet.store.desired("web")
    assert (second.revision, second.config_hash) == (first.revision + 1, first.config_hash)

    # The file gone: the first host fails saying which variable and file; the rollout halts
    # and both hosts keep serving the old containers.
    secret.unlink()
    fleet.update()
    waited = fleet.wait(timeout=30)
    outputs.append(waited.stdout + waited.stderr)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    halted = fleet.store.desired("web").halted
    assert halted is not None and (
        f"DB_PASSWORD: valueFrom file {secret}: cannot read it (No such file or directory)"
        in halted.error), halted
    # The other host reports `halted` once it has seen the halt, which can be after `wait`.
    statuses = lambda: sorted(fleet.status(h).status for h in ("h1", "h2"))  # noqa: E731
    wait_for(lambda: statuses() == ["failed", "halted"], 15, "one host failed, one halted")
    assert {app_env(h)["DB_PASSWORD"] for h in ("h1", "h2")} == {rotated}
    # Back in place, unchanged: the next update resumes and finds nothing to replace.
    before = containers(docker_client, fleet.project, "h1") + \
        containers(docker_client, fleet.project, "h2")
    secret.write_text(rotated)
    fleet.update()
    fleet.wait_done()
    assert containers(docker_client, fleet.project, "h1") + \
        containers(docker_client, fleet.project, "h2") == before

    for args in (("getconfig", fleet.project), ("list", fleet.project, "--json"),
                 ("history", fleet.project, "-c", "web", "--json"),
                 ("events", fleet.project, "-c", "web")):
        cli(*args)
    keyspace = "\n".join(kv.value.decode(errors="replace")
                         for kv in fleet.etcd.get_prefix("/")[0])
    labels = [c.labels for c in docker_client.containers.list(
        filters={"label": f"io.gantry.project={fleet.project}"})]
    assert len(labels) == 2 and all(lab["io.gantry.secrets"] for lab in labels)
    assert "DB_PASSWORD" in keyspace and str(secret) in keyspace  # the references are there
    logs = [(fleet.base / h / "gantryd.log").read_text(errors="replace") for h in ("h1", "h2")]
    everything = "\n".join([*outputs, keyspace, json.dumps(labels), *logs])
    for value in (db, rotated, token):
        assert value not in everything


def test_a_changed_secret_is_a_reason_to_deploy():
    desired = Desired(status="ready", revision=3, image="r@sha256:1", config_hash="h",
                      component={})
    live = R.Live(image="r@sha256:1", config_hash="h", origin="gantryd")
    assert R.decide(desired, live, "h1").action == R.IDLE
    assert R.decide(desired, live, "h1", secrets_changed=True) == R.Decision(
        R.DEPLOY, "updating", "secret changed")
    halted = replace(desired, halted=Halt(machine="h1", revision=3, error="no file"))
    assert R.decide(halted, live, "h1", secrets_changed=True) == R.Decision(
        R.WAIT, "failed", "no file")


def test_a_host_that_just_deployed_does_not_redeploy_for_a_secret_rotated_since(monkeypatch):
    """The race the fleet test once lost: a secret rotated between a host's deploy and its next
    reconcile waits for the next update, like a secret rotated at any other time."""
    from gantry import secret_env
    from gantryd.secret_check import SecretCheck

    monkeypatch.setattr(secret_env, "references", lambda model: ["DB_PASSWORD"])
    monkeypatch.setattr(secret_env, "stale", lambda lifecycle, model: True)
    monkeypatch.setattr(Desired, "model", lambda self: object())
    desired = Desired(status="ready", revision=3, image="r@sha256:1", config_hash="h",
                      component={"name": "web"})
    live = R.Live(image="r@sha256:1", config_hash="h", origin="gantryd")
    check = SecretCheck(lifecycle=None)
    check.deployed("web", 3)
    assert not check.changed("web", desired, live)
    # The next desired revision looks again, and at the start of a daemon (nothing seen).
    assert check.changed("web", replace(desired, revision=4), live)
    assert SecretCheck(lifecycle=None).changed("web", desired, live)
