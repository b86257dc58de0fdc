"""etcd faults: a 3-member cluster losing a member mid-rollout; etcd gone altogether."""
from __future__ import annotations

from gantryd import rollout

from conftest import HOSTS, component, wait_for  # noqa: E402  (tests/gantryd/conftest.py)


def test_losing_an_etcd_member_mid_rollout(cluster_fleet, etcd_cluster, test_images):
    fleet = cluster_fleet
    fleet.deploy_v1(test_images)
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    wait_for(lambda: fleet.acquired(2), 30, "the rollout to start")
    etcd_cluster.kill(0)  # the first endpoint: every client starts on it
    fleet.wait_done(timeout=90)
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}
    assert rollout.max_overlap(fleet.store.events("web"), revision=2) == 1


def test_etcd_outage_keeps_serving_and_the_daemon_resumes(cluster_fleet, etcd_cluster,
                                                           test_images):
    fleet = cluster_fleet
    hosts = ("h1", "h2")
    fleet.deploy_v1(test_images, hosts=hosts)
    for i in range(3):
        etcd_cluster.kill(i)

    def logged(host: str, text: str) -> int:
        return (fleet.base / host / "gantryd.log").read_text().count(text)
    wait_for(lambda: all(logged(h, "etcd unreachable") for h in hosts), 30,
             "the daemons to notice")
    for _ in range(5):  # containers and proxies serve on
        assert {fleet.answers(h) for h in hosts} == {"v1"}
    assert all(fleet.procs[h].poll() is None for h in hosts)
    etcd_cluster.start()
    wait_for(lambda: all(logged(h, "back to normal") for h in hosts), 60, "the daemons to resume")
    fleet.setconfig(component(test_images, "v2", fleet.port))
    fleet.update()
    fleet.wait_done()
    assert {fleet.answers(h) for h in hosts} == {"v2"}
    # One line per change of state, not one per retry.
    assert all(logged(h, "etcd unreachable") == 1 for h in hosts)
