"""Fixtures for the gantryd tests: a Store on the session etcd and a Fleet of simulated hosts
(see fleet_helpers.py, which holds the Fleet itself so that scripts/scorecard can use it too).
Tests import the helpers from ``fleet_helpers`` (a module name of their own: `conftest`
is ambiguous across test folders)."""
from __future__ import annotations

import pytest

from fleet_helpers import (HOSTS, LEASE_TTL, ROOT, Fleet, component, open_fleet,  # noqa: F401
                           wait_for)
from gantryd.etcd import Etcd
from gantryd.store import Store


@pytest.fixture
def store(etcd, project):
    client = Etcd(etcd.endpoints)
    yield Store(client, project)
    client.close()


def _fleet(endpoints: list[str], project: str):
    # The logs are printed on success too: pytest shows them when the test failed.
    with open_fleet(endpoints, project, on_exit=lambda f: print(f.logs())) as f:
        yield f


@pytest.fixture
def fleet(etcd, project, docker_client, test_images):
    """Simulated hosts on the session etcd."""
    yield from _fleet(etcd.endpoints, project)


@pytest.fixture
def cluster_fleet(etcd_cluster, project, docker_client, test_images):
    """Simulated hosts on a fresh 3-member etcd cluster (every endpoint given to each)."""
    yield from _fleet(etcd_cluster.endpoints, project)


@pytest.fixture
def serve(etcd):
    """A `gantryd serve` on the session etcd (token and webhook secret set)."""
    from serve_helpers import Serve
    s = Serve(etcd.endpoints)
    yield s
    s.close()
    print(s.logs())
