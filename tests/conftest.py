"""Session fixtures on the real parts: dockerd, the local registry, etcd (single and a
3-member cluster), and the test images. One of each per session; each test gets its own
project name, and every container labelled with it is removed at the end of the test."""
from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import rig  # noqa: E402

PROJECT_LABEL = "io.gantry.project"


@pytest.fixture(scope="session")
def docker_services() -> None:
    """dockerd and the registry, started if not already answering."""
    rig.ensure_dockerd()
    rig.ensure_registry()


@pytest.fixture(scope="session")
def docker_client(docker_services):
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def engine(docker_services):
    """gantry's own client of the session's Docker engine (what Runtime and Host take)."""
    from gantry.runtime import connect

    client = connect(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry(docker_services) -> str:
    """The local registry's name as image references use it (``localhost:5000``)."""
    return rig.REGISTRY


@pytest.fixture(scope="session")
def auth_registry(docker_services, test_images, tmp_path_factory):
    """A second registry, with TLS and a user (htpasswd); Docker config dirs for it: logged
    in, wrong password, none (``.config(kind)``). Started by the first test that asks."""
    registry = rig.start_auth_registry(tmp_path_factory.mktemp("auth-registry"))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def test_images(docker_services) -> dict[str, str]:
    """variant -> pushed reference: v1, v2, v3, never_ready, crash.

    Built once per session unless GANTRY_TEST_IMAGES_BUILT=1 says scripts/test already did."""
    if os.environ.get("GANTRY_TEST_IMAGES_BUILT") == "1":
        return {v: rig.image_ref(v) for v in rig.VARIANTS}
    return rig.build_test_images()


@pytest.fixture(scope="session")
def etcd():
    """One etcd member on free loopback ports with a temp data dir (``.endpoints``)."""
    cluster = rig.EtcdCluster(size=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_cluster():
    """A fresh 3-member etcd cluster on loopback, for fault tests (``.kill(i)``, ``.start(i)``)."""
    cluster = rig.EtcdCluster(size=3).start()
    yield cluster
    cluster.stop()


def _project_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", nodeid.split("::")[-1].lower()).strip("-")[:30]
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def project(request) -> str:
    """A project name of this test alone; its labelled containers are removed afterwards."""
    name = _project_name(request.node.nodeid)
    yield name
    remove_project_containers(name)


def remove_project_containers(name: str) -> int:
    """Force-remove every container labelled with project ``name``; answer how many."""
    import docker

    client = docker.from_env()
    try:
        leftovers = client.containers.list(all=True, ignore_removed=True,
                                           filters={"label": f"{PROJECT_LABEL}={name}"})
        for c in leftovers:
            c.remove(force=True)
        return len(leftovers)
    finally:
        client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first, longest first (`@pytest.mark.long(seconds)`, about a minute when
    not said; a scorecard row about 45 s): with pytest-xdist's load scheduling they are dealt
    round-robin to the workers at the start and the short ones fill in around them, instead
    of one long test starting last and the whole run waiting for it."""
    def seconds(item: pytest.Item) -> float:
        long = item.get_closest_marker("long")
        if long is not None:
            return long.args[0] if long.args else 60
        scenario = item.get_closest_marker("scorecard") and hasattr(item, "callspec")
        return 45 if scenario else 0
    items.sort(key=lambda item: -seconds(item))
