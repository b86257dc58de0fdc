"""Smoke tests of the real rig: the Docker engine, the registry and the test images."""
from __future__ import annotations

import urllib.request

import docker
import pytest

import rig


def test_build_push_pull_by_digest(docker_client, registry, project):
    ref = rig.build_image("v1", repo=f"{registry}/gantry-test/smoke", tag=project)
    digest = docker_client.images.get_registry_data(ref).id
    assert digest.startswith("sha256:")
    docker_client.images.remove(ref, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    pulled = docker_client.images.pull(f"{registry}/gantry-test/smoke@{digest}")
    assert any(d.endswith(digest) for d in pulled.attrs["RepoDigests"])


def test_labelled_container_start_inspect_stop(docker_client, test_images, project):
    c = docker_client.containers.run(
        test_images["v2"], detach=True, labels={"io.gantry.project": project},
        ports={"8080/tcp": ("127.0.0.1", None)})
    found = docker_client.containers.list(filters={"label": f"io.gantry.project={project}"})
    assert [x.id for x in found] == [c.id]
    c.reload()
    port = c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    rig.wait_until(lambda: _get(f"http://127.0.0.1:{port}/") == "v2\n", 15, "the app to answer")
    c.stop(timeout=5)
    c.reload()
    assert c.status == "exited"
    # The image's entry traps SIGTERM, so a stop is a clean exit, not a kill.
    assert c.attrs["State"]["ExitCode"] == 0


def test_variant_that_crashes_exits(docker_client, test_images, project):
    c = docker_client.containers.run(test_images["crash"], detach=True,
                                     labels={"io.gantry.project": project})
    assert c.wait(timeout=30)["StatusCode"] == 3


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None
