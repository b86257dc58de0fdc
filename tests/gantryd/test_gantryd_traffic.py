"""Fleet-wide pause and maintenance: `gantryd pause|resume|maintenance` write one etcd key per
component, and every `gantryd run` applies it to its proxy (real etcd, dockerd, registry)."""
from __future__ import annotations

import pytest

from fleet_helpers import HOSTS, component, wait_for
from gantryd import traffic
from gantryd.store import StoreError


def _everywhere(fleet, check, what: str) -> None:
    wait_for(lambda: all(check(h) for h in HOSTS), 10, f"{what} on every host\n{fleet.logs()}")


def test_pause_resume_maintenance_on_every_host(fleet, test_images):
    fleet.deploy_v1(test_images)
    out = fleet.cli("pause", fleet.project, "-c", "web", "--max-pause", "20").stdout
    assert "Component web -> paused" in out
    _everywhere(fleet, lambda h: (fleet.route(h)["paused"] or {}).get("maxPause") == 20,
                "the pause")
    record = traffic.read(fleet.store, "web")
    assert record.max_pause == 20 and record.paused_since and "@" in record.actor
    _everywhere(fleet, lambda h: fleet.status(h).traffic == ("paused",), "a paused status")
    assert "ready (paused)" in fleet.cli("list", fleet.project).stdout

    fleet.cli("resume", fleet.project, "-c", "web")
    _everywhere(fleet, lambda h: fleet.route(h)["paused"] is None, "the resume")
    assert {fleet.answers(h) for h in HOSTS} == {"v1"}

    fleet.cli("maintenance", fleet.project, "-c", "web", "on", "--message", "Back soon")
    _everywhere(fleet, lambda h: (fleet.route(h)["maintenance"] or {}).get("message")
                == "Back soon", "maintenance")
    assert fleet.answers("h1").startswith("error: HTTP 503")
    _everywhere(fleet, lambda h: fleet.status(h).traffic == ("maintenance",),
                "a maintenance status")

    # A daemon that starts applies the current state: while h2's daemon is away its proxy
    # loses the maintenance (as a proxy with a lost state file would).
    assert fleet.terminate("h2") == 0
    fleet.proxy("h2").maintenance(f"{fleet.project}.web.{fleet.port}", False)
    assert fleet.answers("h2") == "v1"
    fleet.start("h2")
    wait_for(lambda: fleet.route("h2")["maintenance"] is not None, 10,
             f"h2 to apply the maintenance again\n{fleet.logs()}")

    fleet.cli("maintenance", fleet.project, "-c", "web", "off")
    _everywhere(fleet, lambda h: fleet.route(h)["maintenance"] is None, "maintenance off")
    assert {fleet.answers(h) for h in HOSTS} == {"v1"}


def test_bad_input_writes_nothing(fleet, test_images):
    def traffic_keys() -> list[str]:
        kvs, _ = fleet.etcd.get_prefix(fleet.store.keys.root)
        return [kv.key for kv in kvs if kv.key.endswith("/traffic")]

    no_project = fleet.cli("pause", fleet.project, "-c", "web", check=False)
    assert no_project.returncode == 1 and "setconfig" in no_project.stderr
    fleet.setconfig(component(test_images))
    unknown = fleet.cli("pause", fleet.project, "-c", "web", "wbe", check=False)
    assert unknown.returncode == 1 and 'did you mean "web"' in unknown.stderr
    neither = fleet.cli("maintenance", fleet.project, "-c", "web", check=False)
    assert neither.returncode == 2 and "on or off" in neither.stderr
    bad_max = fleet.cli("pause", fleet.project, "-c", "web", "--max-pause", "-1", check=False)
    assert bad_max.returncode == 2
    assert traffic_keys() == []
    # Both spellings of the state parse (before -c, or last after it).
    fleet.cli("maintenance", fleet.project, "off", "-c", "web")
    assert traffic_keys() == [fleet.store.keys.traffic("web")]


def test_change_is_guarded_on_the_key_revision(store):
    """A write that lost a race is re-read and re-applied on top of the winner's."""
    raced = []

    def pause(current):
        if not raced:  # another operator turns maintenance on between our read and our write
            raced.append(traffic.change(store, ["web"],
                                        lambda t: traffic.in_maintenance(t, True, "m")))
        return traffic.paused(current, 5.0)

    (written,) = traffic.change(store, ["web"], pause).values()
    assert (written.max_pause, written.maintenance, written.message) == (5.0, True, "m")
    assert traffic.read(store, "web") == written
    store.etcd.put(store.keys.traffic("web"), b'{"paused": {"maxPause": "x"}}')
    with pytest.raises(StoreError, match="maxPause"):
        traffic.read(store, "web")
