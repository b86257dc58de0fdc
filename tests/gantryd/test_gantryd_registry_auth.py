"""gantryd with a registry that wants a user (TLS + htpasswd): `gantryd update` pins the
digest with the credentials of the Docker config (as the docker CLI does), a host pulls with
its own; without them or with wrong ones, one clear error and the old version keeps serving.
A `docker login` made while the daemon runs counts at once (the config is read for every
pull, as the docker CLI reads it for every command)."""
from __future__ import annotations

import shutil

import rig
from fleet_helpers import component, forget_local_images


def test_pins_and_pulls_with_the_docker_login(fleet, auth_registry, docker_client, test_images,
                                              project, tmp_path):
    repo = f"{auth_registry.name}/gantry-test/{project}"
    auth_registry.push_copy(rig.image_ref("v2"), f"gantry-test/{project}", "v2")
    host_config = tmp_path / "h1-docker"  # the host's Docker config: a wrong password
    shutil.copytree(auth_registry.config("wrong"), host_config)
    try:
        fleet.setconfig(component(test_images, "v1", fleet.port))
        fleet.update()
        fleet.env = {"DOCKER_CONFIG": str(host_config)}
        fleet.start("h1")
        fleet.wait_done()
        v2 = component(test_images, "v2", fleet.port, repo=repo)
        fleet.setconfig(v2)
        revision = fleet.store.desired("web").revision

        fleet.env = {"DOCKER_CONFIG": auth_registry.config("none")}
        refused = fleet.cli("update", project, "-c", "web", check=False)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"docker login {auth_registry.name}" in refused.stderr
        assert fleet.store.desired("web").revision == revision  # nothing written

        fleet.env = {"DOCKER_CONFIG": auth_registry.config("login")}
        fleet.update()
        pinned = fleet.store.desired("web").image
        assert pinned.startswith(f"{repo}@sha256:")
        failed = fleet.wait()  # h1's credentials are refused: its pull fails, rollout halts
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"credentials for {auth_registry.name} were refused" in failed.stdout, \
            failed.stdout
        assert fleet.answers("h1") == "v1"

        rig._run(["docker", "--config", str(host_config), "login", "-u", auth_registry.user,
                  "--password-stdin", auth_registry.name], input=auth_registry.password)
        fleet.update()  # resumes; the running daemon reads the new login
        fleet.wait_done()
        assert fleet.answers("h1") == "v2"
        assert fleet.status("h1").image == pinned
    finally:
        forget_local_images(docker_client, repo)
