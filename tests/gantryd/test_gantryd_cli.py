"""The gantryd CLI (subprocesses) against real etcd and the real registry, no daemon."""
from __future__ import annotations

import json

from fleet_helpers import component
from gantry.config import Rollout
from gantry.config.schema import to_json


def test_setconfig_getconfig_round_trip(fleet, test_images):
    config = fleet.write_config(component(test_images))
    out = fleet.cli("setconfig", fleet.project, str(config))
    assert out.stdout.strip() == "Configuration updated"
    stored = json.loads(fleet.cli("getconfig", fleet.project).stdout)
    assert stored["components"][0]["tag"] == "v1"
    assert stored["components"][0]["rollout"] == to_json(Rollout())  # defaults filled


def test_bad_config_is_rejected_and_etcd_untouched(fleet, test_images):
    fleet.setconfig(component(test_images))
    before = fleet.etcd.get(fleet.store.keys.config)
    bad = dict(component(test_images), readyTimeOut=3)  # typo
    out = fleet.cli("setconfig", fleet.project, str(fleet.write_config(bad)), check=False)
    assert out.returncode != 0
    assert "readyTimeOut" in out.stderr and "readyTimeout" in out.stderr  # with a suggestion
    assert fleet.etcd.get(fleet.store.keys.config) == before
    missing = fleet.cli("setconfig", fleet.project, "/nonexistent.json", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_update_pins_digests_in_one_transaction(fleet, test_images, docker_client):
    api = dict(component(test_images, "v2", port=8081), name="api")
    fleet.setconfig(component(test_images), api)
    out = fleet.cli("update", fleet.project, "-c", "web", "api").stdout
    web, api_d = fleet.store.desired("web"), fleet.store.desired("api")
    assert f"Component web -> {web.image}" in out
    assert web.image.startswith(test_images["v1"].rsplit(":", 1)[0] + "@sha256:")
    # The pinned digest is the registry's digest of the tag.
    registry_digest = docker_client.images.get_registry_data(test_images["v1"]).id
    assert web.image.endswith(registry_digest)
    assert web.mod_revision == api_d.mod_revision  # one transaction
    assert (web.revision, web.status, web.halted) == (1, "ready", None)
    fleet.update("web")
    assert fleet.store.desired("web").revision == 2


def test_update_of_unknown_component_or_project(fleet, test_images):
    out = fleet.cli("update", fleet.project, "-c", "web", check=False)
    assert out.returncode != 0 and "setconfig" in out.stderr
    fleet.setconfig(component(test_images))
    out = fleet.cli("update", fleet.project, "-c", "wbe", check=False)
    assert out.returncode != 0 and 'did you mean "web"' in out.stderr
    assert fleet.store.desired("web") is None


def test_classic_command_line_and_list(fleet, test_images):
    fleet.setconfig(component(test_images))
    fleet.update("web")
    fleet.cli("stop", fleet.project, "-c", "web")
    assert fleet.store.desired("web").status == "stopped"
    text = fleet.cli("list", fleet.project).stdout
    assert "COMPONENT" in text and "stopped" in text and "no live host" in text
    data = json.loads(fleet.cli("list", fleet.project, "--json").stdout)
    assert data["web"]["desired"]["revision"] == 2
    fleet.cli("kill", fleet.project, "-c", "web")
    assert fleet.store.desired("web").status == "killed"


def test_wait_times_out_with_exit_2_when_no_host_runs_it(fleet, test_images):
    fleet.setconfig(component(test_images))
    fleet.update("web")
    out = fleet.wait(timeout=0.5)
    assert out.returncode == 2 and "no live host" in out.stderr


def test_etcd_endpoint_from_environment_and_unreachable_etcd(fleet, test_images):
    import os
    import subprocess
    import sys
    env = dict(os.environ, GANTRYD_ETCD=",".join(fleet.endpoints))
    out = subprocess.run([sys.executable, "-m", "gantryd", "getconfig", fleet.project],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "no configuration" in out.stderr
    out = fleet.cli("getconfig", fleet.project, endpoints=["127.0.0.1:1"], check=False)
    assert out.returncode == 1 and "no etcd endpoint answered" in out.stderr
    secret = "pa55-word"
    out = fleet.cli("--user", "root", "--password", secret, "list", fleet.project,
                    endpoints=["127.0.0.1:1"], check=False)
    assert out.returncode != 0 and secret not in out.stdout + out.stderr
