"""gantry against a registry with TLS and a user (htpasswd): after `docker login`, gantry
pulls and pins by digest with the credentials of the Docker config, as the docker CLI does;
missing or wrong credentials are one clear error and the old version keeps serving."""
from __future__ import annotations

import os

import rig
from gantry_helpers import component_dict, forget_local_images
from loadgen import request


def test_gantry_pulls_with_the_docker_login(cli, auth_registry, docker_client, project):
    repo = f"{auth_registry.name}/gantry-test/{project}"
    for tag in ("v1", "v2"):
        auth_registry.push_copy(rig.image_ref(tag), f"gantry-test/{project}", tag)
    web = component_dict(repo=repo, tag="v1")
    where = ("127.0.0.1", web["ports"][0]["external"])
    try:
        cli.write_config(web)
        done = cli.run("update", "web", DOCKER_CONFIG=auth_registry.config("login"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert request(where, "/", timeout=5) == (True, "v1")
        image = docker_client.containers.list(filters={"label": f"io.gantry.project={project}"}
                                              )[0].attrs["Config"]["Image"]
        assert image.startswith(f"{repo}@sha256:")  # pulled and pinned by digest

        cli.write_config({**web, "tag": "v2"})
        for kind, says in (("none", f"no credentials for {auth_registry.name} in the Docker "
                                    f"config: docker login {auth_registry.name}"),
                           ("wrong", f"the Docker config's credentials for "
                                     f"{auth_registry.name} were refused")):
            failed = cli.run("update", "web", DOCKER_CONFIG=auth_registry.config(kind))
            assert failed.returncode == 1 and says in failed.stderr, failed.stderr
            assert "Traceback" not in failed.stderr
            assert request(where, "/", timeout=5) == (True, "v1")  # the old one serves
    finally:
        forget_local_images(docker_client, repo)


HELPER = """#!/bin/sh
read server
case "$server" in
  {registry}) printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def test_gantry_pulls_with_a_credential_helper(cli, auth_registry, docker_client, project,
                                               tmp_path):
    """credHelpers in the Docker config: gantry asks `docker-credential-<name> get`, as the
    docker CLI does; a helper that fails, or is not installed, is one clear error."""
    repo = f"{auth_registry.name}/gantry-test/{project}"
    auth_registry.push_copy(rig.image_ref("v1"), f"gantry-test/{project}", "v1")
    web = component_dict(repo=repo, tag="v1")
    where = ("127.0.0.1", web["ports"][0]["external"])
    bin_dir, config_dir = tmp_path / "bin", tmp_path / "docker-config"
    bin_dir.mkdir()
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        '{"credHelpers": {"%s": "gantrytest"}}' % auth_registry.name)
    helper = bin_dir / "docker-credential-gantrytest"

    def with_helper(secret: str | None) -> dict[str, str]:
        if secret is None:
            helper.unlink(missing_ok=True)
        else:
            helper.write_text(HELPER.format(registry=auth_registry.name, user=auth_registry.user,
                                            secret=secret))
            helper.chmod(0o755)
        return {"DOCKER_CONFIG": str(config_dir),
                "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    try:
        cli.write_config(web)
        for secret, says in ((None, "docker-credential-gantrytest (the Docker config's "
                                    "credential helper) is not installed or not in PATH"),
                             (f"not-{auth_registry.password}",
                              f"the Docker config's credentials for {auth_registry.name} "
                              f"were refused")):
            failed = cli.run("update", "web", **with_helper(secret))
            assert failed.returncode == 1 and says in failed.stderr, failed.stderr
            assert "Traceback" not in failed.stderr
        done = cli.run("update", "web", **with_helper(auth_registry.password))
        assert done.returncode == 0, done.stdout + done.stderr
        assert request(where, "/", timeout=5) == (True, "v1")
        image = docker_client.containers.list(filters={"label": f"io.gantry.project={project}"}
                                              )[0].attrs["Config"]["Image"]
        assert image.startswith(f"{repo}@sha256:")
    finally:
        forget_local_images(docker_client, repo)
