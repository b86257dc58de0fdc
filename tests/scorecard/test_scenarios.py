"""The fault scorecard as tests: one test per scenario of tests/scorecard/scenarios.py, each on
a fresh 3-host fleet under load, asserting zero failed requests (beyond those the fault itself
cuts, see Row.excused), zero leaked containers and the expected outcome. scripts/scorecard
runs the same functions and prints the table. Marked ``scorecard`` (part of the normal suite;
``-m 'not scorecard'`` leaves it out). The dockerd restart is marked ``serial``: it takes the
engine away from every other test, so scripts/test runs it alone, after the parallel run."""
from __future__ import annotations

import pytest

from scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.scorecard


# Scenarios that stop a service every test shares.
SERIAL = {"dockerd_restart"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.serial)
                                  if name in SERIAL else name for name in SCENARIOS])
def test_scenario(name, request, project, docker_client, test_images):
    endpoints = None if SCENARIOS[name].etcd_members else request.getfixturevalue("etcd").endpoints
    row = run_scenario(name, test_images, endpoints, project=project)
    print(row.report())
    assert row.ok, row.report()
    assert row.failed == row.excused and row.leaked == 0
