"""`GET /metrics` of `gantryd serve`: the fleet as Prometheus metrics, read from etcd on every
scrape (a real serve subprocess, real etcd; a real fleet for the rollout), parsed with
prometheus_client's own text parser."""
from __future__ import annotations

from datetime import datetime

import pytest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.parser import text_string_to_metric_families

from fleet_helpers import component, wait_for
from gantry.config import parse_config
from gantryd import history as H
from gantryd import revisions
from gantryd.endpoints import Endpoint
from gantryd.store import Desired, MachineStatus, Store, _dump


def scrape(serve, project: str) -> dict[tuple, float]:
    """(sample name, label=value...) -> value, for the samples of `project`."""
    reply = serve.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            if s.labels.get("project") == project:
                rest = tuple(f"{k}={v}" for k, v in sorted(s.labels.items())
                             if k not in ("project", "component"))
                out[(s.name, *rest)] = s.value
    return out


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


POLICY = {"rollout": {"onFailure": "rollback"}}


def _pin(store: Store, tag: str, cause: str = H.UPDATE) -> Desired:
    snapshot = {"name": "web", "repo": "r", "tag": tag, **POLICY}

    def change(_: str, current: Desired | None) -> Desired:
        return Desired("ready", (current.revision if current else 0) + 1, f"r@sha256:{tag}",
                       tag, snapshot, updated_at="2030-01-01T00:00:00Z", cause=cause)
    return store.change_desired(["web"], change)["web"]


def _done(store: Store, revision: int, at: str, seconds: float) -> None:
    store.etcd.put(store.keys.done_entry("web", revision),
                   _dump({"revision": revision, "at": at, "seconds": seconds}))


def test_metrics_from_the_kept_records(store, serve, etcd, project):
    """Every metric from hand-made records: halts and reverts from the history and events,
    the histogram from the done markers, slot holders of both pools, endpoints."""
    store.set_config(parse_config({"components": [{"name": "web", "repo": "r", **POLICY}]}))
    r1 = _pin(store, "a1")
    _done(store, 1, "2030-01-01T00:00:10Z", 10)
    r2 = _pin(store, "a2")
    assert revisions.fail(store, "web", r2, "h2", "not ready") == "reverted"  # r3
    _done(store, 3, "2030-01-01T00:01:00Z", 3.5)
    store.change_desired(["web"], lambda _, cur: H.repin(r1, cur, H.ROLLBACK, "bob@box"))  # r4
    for m, status, rev in (("h1", "updating", 4), ("h2", "ready", 3)):
        store.put_machine("web", MachineStatus(m, status, rev, "r@sha256:a1", "a1"), 0)
    for key in (store.keys.lock("web", 0), store.keys.lock("web", 0, "pulls"),
                store.keys.lock("web", 1, "pulls")):
        store.etcd.put(key, _dump({"machine": "h1", "revision": 4}))
    for m, healthy in (("h1", True), ("h2", False)):
        e = Endpoint("web", m, "10.0.0.1", 80, healthy=healthy)
        store.etcd.put(store.keys.endpoint("web", m, 80), _dump(e.to_json()))

    got = scrape(serve, project)
    assert got[("gantryd_project_up",)] == 1
    assert got[("gantryd_desired_revision",)] == 4
    hosts = {k[1]: v for k, v in got.items() if k[0] == "gantryd_hosts"}
    assert hosts["status=ready"] == hosts["status=updating"] == 1 and sum(hosts.values()) == 2
    assert got[("gantryd_rollout_in_progress",)] == 1 and got[("gantryd_rollout_halted",)] == 0
    assert got[("gantryd_rollout_duration_seconds_count",)] == 2
    assert got[("gantryd_rollout_duration_seconds_sum",)] == 13.5
    assert got[("gantryd_rollout_duration_seconds_bucket", "le=5.0")] == 1
    assert got[("gantryd_rollout_duration_seconds_bucket", "le=10.0")] == 2
    assert got[("gantryd_rollout_halts_total",)] == 1
    assert got[("gantryd_rollout_reverts_total", "cause=auto-revert")] == 1
    assert got[("gantryd_rollout_reverts_total", "cause=rollback")] == 1
    assert got[("gantryd_slot_holders", "pool=lock")] == 1
    assert got[("gantryd_slot_holders", "pool=pulls")] == 2
    assert got[("gantryd_last_rollout_completed_timestamp_seconds",)] == \
        _at("2030-01-01T00:01:00Z")
    assert got[("gantryd_endpoints", "healthy=true")] == 1
    assert got[("gantryd_endpoints", "healthy=false")] == 1

    # OpenMetrics for a scraper that asks for it.
    reply = serve.get("/metrics", headers={"Accept": "application/openmetrics-text; "
                                                     "version=1.0.0"})
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.text.endswith("# EOF\n") and OPENMETRICS.startswith(
        "application/openmetrics-text")

    # An unreadable record leaves that project out (up 0), never the scrape.
    other = Store(store.etcd, project + "-x")
    other.set_config(parse_config({"components": [{"name": "web", "repo": "r"}]}))
    other.etcd.put(other.keys.machine("web", "h1"), b"not json")
    assert scrape(serve, project + "-x") == {("gantryd_project_up",): 0}
    assert scrape(serve, project)[("gantryd_desired_revision",)] == 4
    assert "left out" in serve.logs()


@pytest.mark.timeout(150)
def test_metrics_after_a_rollout_and_an_auto_revert(fleet, serve, test_images):
    """A real fleet: v1 rolled out, a crashing version reverted; /metrics says so."""
    fleet.deploy_v1(test_images, hosts=("h1", "h2"), **POLICY)
    fleet.setconfig(component(test_images, "crash", fleet.port, **POLICY))
    fleet.update()
    assert fleet.wait().returncode == 1  # the crash was reverted: a failed rollout

    def reverted_and_done():
        got = scrape(serve, fleet.project)
        return got if got.get(("gantryd_rollout_duration_seconds_count",)) == 2 else None
    got = wait_for(reverted_and_done, 30, f"the revert to complete\n{fleet.logs()}")
    assert got[("gantryd_desired_revision",)] == 3
    assert got[("gantryd_hosts", "status=ready")] == 2
    assert got[("gantryd_rollout_in_progress",)] == 0
    assert got[("gantryd_rollout_halts_total",)] == 1
    assert got[("gantryd_rollout_reverts_total", "cause=auto-revert")] == 1
    assert got[("gantryd_endpoints", "healthy=true")] == 2
    done = revisions.done(fleet.store, "web")
    assert sorted(done) == [1, 3]
    assert got[("gantryd_last_rollout_completed_timestamp_seconds",)] == _at(done[3].at)
    assert got[("gantryd_rollout_duration_seconds_sum",)] == pytest.approx(
        done[1].seconds + done[3].seconds)
