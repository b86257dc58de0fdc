"""Fleet notifications (gantryd/notify_events.py, gantryd/notify.py): the pure rules, then
notifiers on the real etcd with a real local HTTP receiver that counts deliveries by id, then a
real fleet: one delivery per event (not per host), a failing revision, a receiver down during
the rollout, and the delivering daemon killed with -9."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rig  # scripts/ (on sys.path via fleet_helpers)
from fleet_helpers import component, wait_for
from gantry.config import ConfigError, parse_config
from gantryd import deploy, revisions
from gantryd import notify_events as N
from gantryd.etcd import Etcd, Watches
from gantryd.keys import Keys
from gantryd.notify import Notifier, post
from gantryd.store import Desired, Event, Halt, MachineStatus, Store, _dump

SECRET = "s3cret"
BASE = {"name": "web", "repo": "localhost:5000/x/app", "tag": "v1"}
FAST = N.Backoff(0.2, 1.0, 120.0)


class Receiver:
    """A real HTTP server on loopback that records every POST; `status` is its answer."""

    def __init__(self) -> None:
        self.port = rig.free_port()
        self.status = 200
        self.got: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, body)
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.got.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                     body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self, path: str = "/json") -> Counter:
        return Counter(h["x-gantry-delivery"] for p, h, _ in self.got if p == path)


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def notifications(receiver: Receiver, **json_target) -> list[dict]:
    return [{"url": receiver.url("/json"), "format": "json", "secret": SECRET, **json_target},
            {"url": receiver.url("/slack"), "format": "slack"}]


def version(revision: int, cause: str = "update", **extra) -> Desired:
    comp = parse_config({"components": [BASE]}).components[0].to_dict()
    return Desired("ready", revision, f"localhost:5000/x/app@sha256:{revision:064d}", "h",
                   comp, "2026-01-01T00:00:00Z", actor="ann@box", cause=cause, **extra)


# -- pure rules ----------------------------------------------------------------------------------

def test_each_record_kind_derives_its_event_and_id():
    k = Keys("shop")
    hist = lambda d: N.derive(k, k.history_entry("web", d.revision), _dump(d.to_json()))  # noqa
    started = hist(version(3))
    assert (started.kind, started.name, started.revision) == ("started", "started", 3)
    assert started.delivery_id("shop") == "shop.web.r3.started"
    assert hist(version(4, "rollback", source=2)).kind == "rolled-back"
    reverted = hist(version(5, "auto-revert", source=2, reverted=Halt("h2", "boom", 4)))
    assert (reverted.kind, reverted.machine, reverted.error) == ("reverted", "h2", "boom")
    done = N.derive(k, k.done_entry("web", 3), b'{"revision":3,"at":"x","seconds":7.5}')
    assert (done.kind, done.name, done.duration) == ("completed", "completed", 7.5)
    failed = N.derive(k, k.machine("web", "h2"), _dump(MachineStatus(
        "h2", "failed", 3, error="ready checks failed").to_json()))
    assert (failed.name, failed.revision, failed.error) == ("failed.h2", 3,
                                                            "ready checks failed")
    assert N.derive(k, k.machine("web", "h2"), _dump(MachineStatus("h2", "ready", 3).to_json())) \
        is None
    halted = N.derive(k, k.events_of("web", 3) + "abc", _dump(Event(
        "halted", "h2", 3, detail="ready checks failed").to_json()))
    assert (halted.name, halted.machine) == ("halted", "h2")
    remedy = N.derive(k, k.events_of("web", 3) + "e1f2", _dump(Event(
        "acquired", "h1", 3, slot=0, detail="remediation: 0123 exited").to_json()))
    assert (remedy.kind, remedy.name, remedy.error) == ("remediation", "remediation.h1.e1f2",
                                                        "0123 exited")
    for key, value in ((k.events_of("web", 3) + "x", _dump(Event("acquired", "h1", 3).to_json())),
                       (k.history_entry("web", 3), b"not json"), (k.desired("web"), b"{}"),
                       (k.notify_entry("web", 3, "started"), b"{}"), (k.config, b"{}")):
        assert N.derive(k, key, value) is None, key


def test_payload_text_and_signed_request():
    fact = N.Fact("completed", "web", 3, "completed", "2026-01-01T00:01:00Z", duration=12.4)
    event = N.payload("shop", fact, version(3))
    assert event["id"] == "shop.web.r3.completed" and event["duration"] == 12.4
    assert (event["cause"], event["actor"]) == ("update", "ann@box")
    assert event["text"] == "shop/web: rollout of r3 (update) completed on every host in 12 s"
    signed = parse_config({"components": [BASE], "notifications": [
        {"url": "http://r.example/hook", "secret": SECRET}]}).notifications[0]
    body, headers = N.request(signed, event)
    assert json.loads(body) == event and N.request(signed, event)[0] == body  # same bytes
    want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == want
    assert (headers["X-Gantry-Delivery"], headers["X-Gantry-Event"]) == (event["id"],
                                                                         "completed")
    slack = parse_config({"components": [BASE], "notifications": [
        {"url": "https://hooks.slack.example/T/B/x", "format": "slack"}]}).notifications[0]
    body, headers = N.request(slack, event)
    assert json.loads(body) == {"text": event["text"]} and "X-Hub-Signature-256" not in headers
    texts = {kind: N.text({**event, "event": kind, "machine": "h2", "error": "boom",
                           "source": 1})
             for kind in ("started", "failed", "halted", "reverted", "rolled-back",
                          "remediation")}
    assert texts["started"] == "shop/web: rollout of r3 started (update by ann@box): " \
        f"localhost:5000/x/app:v1@sha256:{3:064d}"
    assert texts["failed"] == "shop/web: h2 failed on r3: boom"
    assert "halted fleet-wide (h2: boom)" in texts["halted"]
    assert "auto-revert to r1 as r3" in texts["reverted"]
    assert "rollback to r1 started as r3 by ann@box" in texts["rolled-back"]
    assert "h2 unhealthy (boom)" in texts["remediation"]


def test_backoff_schedule_and_its_environment_knob(monkeypatch):
    default = N.Backoff.from_env()
    assert [default.delay(i) for i in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert default.give_up == 3600
    monkeypatch.setenv(N.ENV_BACKOFF, "0.2,1,60")
    assert N.Backoff.from_env() == N.Backoff(0.2, 1.0, 60.0)
    for bad in ("1,2", "x,1,2", "2,1,60", "1,2,0"):
        monkeypatch.setenv(N.ENV_BACKOFF, bad)
        with pytest.raises(N.NotifyError, match=N.ENV_BACKOFF):
            N.Backoff.from_env()
    assert [N.permanent(s) for s in (302, 400, 404, 408, 429, 500, 503)] == \
        [True, True, True, False, False, False, False]


def test_config_errors_name_the_path_and_repr_hides_credentials():
    def error(targets) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"components": [BASE], "notifications": targets}, ".gantry")
        return str(info.value)
    assert error([{"url": "ftp://x"}]) == \
        '.gantry: notifications[0].url: expected an http:// or https:// URL, got "ftp://x"'
    assert 'notifications[0].format: expected one of "json", "slack", got "slak"; did you ' \
        'mean "slack"?' in error([{"url": "http://a", "format": "slak"}])
    assert "notifications[0].events[1]: expected one of" in error(
        [{"url": "http://a", "events": ["started", "done"]}])
    assert "notifications[0].events: expected a list of at least 1" in error(
        [{"url": "http://a", "events": []}])
    assert "notifications[1].url: duplicate notification target" in error(
        [{"url": "http://a"}, {"url": "http://a"}])
    assert "notifications[0].secret: expected a non-empty string or null" in error(
        [{"url": "http://a", "secret": 5}])
    n = parse_config({"components": [BASE], "notifications": [
        {"url": "https://hooks.slack.example/T0/B0/tok", "secret": "x"}]}).notifications[0]
    assert "tok" not in repr(n) and "'x'" not in repr(n) and "hooks.slack.example" in repr(n)
    assert len(n.events) == 7  # every kind by default


def test_post_classifies_answers(receiver):
    n = parse_config({"components": [BASE], "notifications": [
        {"url": receiver.url("/json")}]}).notifications[0]
    event = N.payload("p", N.Fact("started", "web", 1, "started", "x"), None)
    assert post(n, event)[:2] == (True, False)
    receiver.status = 404
    assert post(n, event) == (False, True, "HTTP 404")
    receiver.status = 503
    assert post(n, event) == (False, False, "HTTP 503")
    receiver.stop()
    ok, permanent, what = post(n, event)
    assert (ok, permanent) == (False, False) and "refused" in what.lower()


# -- notifiers on the real etcd ------------------------------------------------------------------

_FEEDS: dict[Notifier, Watches] = {}  # an elected notifier's watch of its keys


def _elect(n: Notifier, lease) -> None:
    """As `gantryd run` runs it: on the daemon's lease (`lease()`), fed by its watch."""
    n.elect(lease)
    _FEEDS[n] = n.store.etcd.watch(n.ranges, n.feed)


def _notifiers(etcd, project: str, names: list[str],
               elected: bool = False) -> tuple[list[Notifier], list[Etcd]]:
    """Started notifiers; `elected`: each on a lease kept by the test and fed by a watch of
    its keys, as in `gantryd run` (one of them notifies)."""
    clients = [Etcd(etcd.endpoints) for _ in names]
    notifiers = [Notifier(Store(c, project), name, lease_ttl=2, backoff=FAST)
                 for c, name in zip(clients, names, strict=True)]
    for n in notifiers:
        if elected:
            lease = n.store.etcd.lease(2)
            _elect(n, lambda lease=lease: lease)
        n.start()
    return notifiers, clients


def _close(notifiers: list[Notifier], clients: list[Etcd]) -> None:
    for n in notifiers:
        n.close()
        if n in _FEEDS:
            _FEEDS.pop(n).cancel()
        if n._lent is not None:
            lent = n._lent()
            assert lent is not None and lent.alive  # the lender's to revoke, not ours
            lent.revoke()
    for c in clients:
        c.close()


def test_a_lent_lease_renewed_by_its_lender_is_taken_up(etcd, project, receiver, store):
    """A notifier on its daemon's lease: while the daemon renews a lost lease it waits, then
    claims on the new one; closing it leaves the lease to the daemon."""
    store.set_config(parse_config({"components": [BASE], "notifications":
                                   notifications(receiver, events=["started"])}))
    client = Etcd(etcd.endpoints)
    n = Notifier(Store(client, project), "h1", lease_ttl=2, backoff=FAST)
    leases = [client.lease(2)]
    _elect(n, lambda: leases[-1])
    n.start()
    try:
        wait_for(lambda: n._begun and n._lease is leases[0], 10, "the notifier on lease 1")
        leases[0].revoke()  # lost: until the daemon has a new one, the notifier waits
        leases.append(client.lease(2))
        store.change_desired(["web"], lambda c, cur: version(1))
        wait_for(lambda: receiver.ids("/json"), 15, "the delivery")
        assert n._lease is leases[1]
    finally:
        n.close()
        _FEEDS.pop(n).cancel()
    assert leases[1].alive
    leases[1].revoke()
    client.close()


def _record(store: Store, revision: int, name: str) -> dict | None:
    kv = store.etcd.get(store.keys.notify_entry("web", revision, name))
    return json.loads(kv.value) if kv else None


@pytest.mark.parametrize("elected", [False, True], ids=["all", "elected"])
def test_many_notifiers_deliver_each_event_once(etcd, project, receiver, store, elected):
    store.set_config(parse_config({"components": [BASE], "notifications":
                                   notifications(receiver, events=["started"])}))
    notifiers, clients = _notifiers(etcd, project, ["h1", "h2", "h3"], elected)
    try:
        wait_for(lambda: [n._begun for n in notifiers].count(True) == (1 if elected else 3),
                 10, "the watches")
        store.change_desired(["web"], lambda c, cur: version(1))
        store.etcd.put(store.keys.done_entry("web", 1), b'{"revision":1,"at":"x","seconds":2}')
        wait_for(lambda: len(receiver.ids("/slack")) == 2 and receiver.ids("/json"), 15,
                 "deliveries")
        record = wait_for(lambda: (r := _record(store, 1, "started")) and all(
            t["state"] == "sent" for t in r["targets"].values()) and r, 10, "sent")
        # Only the kinds a target asked for: the json one wants "started" alone.
        assert receiver.ids("/json") == {f"{project}.web.r1.started": 1}
        assert set(receiver.ids("/slack")) == {f"{project}.web.r1.started",
                                               f"{project}.web.r1.completed"}
        assert record["claimedBy"] in ("h1", "h2", "h3")
        assert store.etcd.get(store.keys.notify_entry("web", 1, "started") + "/owner") is None
        _, headers, body = next(g for g in receiver.got if g[0] == "/json")
        assert headers["x-hub-signature-256"] == N.sign(SECRET.encode(), body)
        assert json.loads(body)["event"] == "started"
    finally:
        _close(notifiers, clients)
    assert sum(receiver.ids("/slack").values()) == 2


def _leader(notifiers: list[Notifier]) -> Notifier | None:
    """The one notifier that watches the project (None while none does, or while one hands
    over to another: the claims, not the election, keep deliveries single)."""
    begun = [n for n in notifiers if n._begun]
    return begun[0] if len(begun) == 1 else None


def test_the_elected_notifier_killed_another_takes_over_and_delivers(
        etcd, project, receiver, store):
    """Only the leader claims. Killed (as -9: its threads stop, its lease is neither kept
    alive nor revoked), another host takes the lead once the lease expires, delivers what
    the dead one had claimed and notifies what happened meanwhile."""
    receiver.stop()
    store.set_config(parse_config({"components": [BASE], "notifications":
                                   notifications(receiver, events=["started"])}))
    notifiers, clients = _notifiers(etcd, project, ["h1", "h2", "h3"], elected=True)
    try:
        leader = wait_for(lambda: _leader(notifiers), 10, "a leader")
        store.change_desired(["web"], lambda c, cur: version(1))
        assert wait_for(lambda: _record(store, 1, "started"), 10, "the claim")[
            "claimedBy"] == leader.machine
        leader.close()
        _FEEDS.pop(leader).cancel()
        leader._lent().abandon()
        notifiers.remove(leader)
        store.change_desired(["web"], lambda c, cur: version(2))  # while nobody notifies
        successor = wait_for(lambda: _leader(notifiers), 15, "a successor")
        receiver.start()
        wait_for(lambda: receiver.ids() == {f"{project}.web.r1.started": 1,
                                            f"{project}.web.r2.started": 1}, 20,
                 f"both delivered: {receiver.ids()}")
        first = wait_for(lambda: (r := _record(store, 1, "started")) and all(
            t["state"] == "sent" for t in r["targets"].values()) and r, 10, "r1 sent")
        assert first["claimedBy"] == leader.machine
        assert {t["by"] for t in first["targets"].values()} == {successor.machine}
        assert _record(store, 2, "started")["claimedBy"] == successor.machine
        assert json.loads(store.etcd.get(store.keys.notify_leader).value) == {
            "machine": successor.machine}
        assert _leader(notifiers) is successor
    finally:
        _close(notifiers, clients)
    assert sum(receiver.ids("/slack").values()) == 2


def test_a_leader_key_deleted_by_hand_is_taken_again_by_one(etcd, project, receiver, store):
    """The key goes while its holder lives: the holder stops watching, and one notifier
    (whichever is first) takes the lead again; events still go once."""
    store.set_config(parse_config({"components": [BASE], "notifications":
                                   notifications(receiver, events=["started"])}))
    notifiers, clients = _notifiers(etcd, project, ["h1", "h2"], elected=True)
    try:
        first = wait_for(lambda: _leader(notifiers), 10, "a leader")
        term = first._term
        store.etcd.delete(store.keys.notify_leader)
        wait_for(lambda: (n := _leader(notifiers)) and n._term > term, 10, "a new term")
        holder = json.loads(store.etcd.get(store.keys.notify_leader).value)["machine"]
        assert holder == _leader(notifiers).machine
        store.change_desired(["web"], lambda c, cur: version(1))
        wait_for(lambda: receiver.ids() == {f"{project}.web.r1.started": 1}, 15, "delivered")
        assert _record(store, 1, "started")["claimedBy"] == holder
    finally:
        _close(notifiers, clients)


def test_a_standby_that_missed_the_leader_key_going_takes_the_lead_at_its_recheck(
        etcd, project, receiver, store, monkeypatch):
    """A standby whose watch never reports the leader key's deletion (a lost event) still
    takes the lead: it reads the key again every RESCAN_INTERVAL."""
    import gantryd.notify as notify_module

    monkeypatch.setattr(notify_module, "RESCAN_INTERVAL", 1.0)
    store.set_config(parse_config({"components": [BASE], "notifications":
                                   notifications(receiver, events=["started"])}))
    (leader,), clients = _notifiers(etcd, project, ["h1"], elected=True)
    notifiers = [leader]
    try:
        wait_for(lambda: _leader(notifiers), 10, "h1 leads")
        client = Etcd(etcd.endpoints)
        clients.append(client)
        standby = Notifier(Store(client, project), "h2", lease_ttl=2, backoff=FAST)
        lease = client.lease(2)
        standby.elect(lambda: lease)  # and no watch feeding it: it hears of nothing
        standby.start()
        notifiers.append(standby)
        leader.close()
        _FEEDS.pop(leader).cancel()
        leader._lent().abandon()  # as kill -9: the lease expires, the key goes
        notifiers.remove(leader)
        wait_for(lambda: _leader(notifiers) is standby, 15, "h2 takes the lead unfed")
        store.change_desired(["web"], lambda c, cur: version(1))
        wait_for(lambda: receiver.ids() == {f"{project}.web.r1.started": 1}, 15, "delivered")
    finally:
        _close(notifiers, clients)


def test_refused_delivery_is_not_retried_and_a_late_notifier_catches_up(
        etcd, project, receiver, store):
    store.set_config(parse_config({"components": [BASE],
                                   "notifications": notifications(receiver)[:1]}))
    notifiers, clients = _notifiers(etcd, project, ["h1"])
    try:
        wait_for(lambda: notifiers[0]._begun, 10, "the watch")
        receiver.status = 400
        store.change_desired(["web"], lambda c, cur: version(1))
        record = wait_for(lambda: (r := _record(store, 1, "started")) and
                          list(r["targets"].values())[0]["state"] != "pending" and r, 10,
                          "the outcome")
        assert list(record["targets"].values())[0] | {"at": "-"} == {
            "state": "failed", "error": "HTTP 400", "attempts": 1, "by": "h1", "at": "-"}
        wait_for(lambda: store.etcd.get(store.keys.notify_cursor), 10, "the cursor")
    finally:
        _close(notifiers, clients)
    receiver.status = 200
    # Nobody watches while revision 2 is written: the next notifier to start derives it.
    store.change_desired(["web"], lambda c, cur: version(2))
    notifiers, clients = _notifiers(etcd, project, ["h2"])
    try:
        wait_for(lambda: receiver.ids() == {f"{project}.web.r1.started": 1,
                                            f"{project}.web.r2.started": 1}, 15,
                 f"r2 caught up: {receiver.ids()}")
    finally:
        _close(notifiers, clients)


def test_a_target_gives_up_in_time_and_one_removed_from_the_config_is_dropped(
        etcd, project, receiver, store):
    receiver.stop()
    targets = notifications(receiver)
    store.set_config(parse_config({"components": [BASE], "notifications": targets}))
    clients = [Etcd(etcd.endpoints)]
    notifier = Notifier(Store(clients[0], project), "h1", lease_ttl=2,
                        backoff=N.Backoff(0.1, 0.3, 2.0))
    notifier.start()
    try:
        wait_for(lambda: notifier._begun, 10, "the watch")
        store.change_desired(["web"], lambda c, cur: version(1))
        wait_for(lambda: _record(store, 1, "started"), 10, "the claim")
        store.set_config(parse_config({"components": [BASE], "notifications": targets[1:]}))
        record = wait_for(lambda: (r := _record(store, 1, "started")) and all(
            t["state"] != "pending" for t in r["targets"].values()) and r, 15, "both outcomes")
        states = sorted((t["state"], t["error"]) for t in record["targets"].values())
        assert states[0] == ("dropped", "no longer in the config")
        assert states[1][0] == "failed" and "refused" in states[1][1].lower()
        assert store.etcd.get(store.keys.notify_owner("web", 1, "started")) is None
    finally:
        _close([notifier], clients)


def test_claims_are_pruned_with_the_revisions(store):
    comp = parse_config({"components": [{**BASE, "rollout": {"keepRevisions": 1}}]}) \
        .components[0].to_dict()
    store.change_desired(["web"], lambda c, cur: Desired("ready", 1, "r@sha256:1", "h", comp))
    store.etcd.put(store.keys.notify_entry("web", 1, "started"), b"{}")
    store.etcd.put(store.keys.notify_owner("web", 1, "started"), b"{}")
    store.change_desired(["web"], lambda c, cur: Desired("ready", 2, "r@sha256:2", "h", comp))
    assert store.etcd.get_keys(store.keys.notify("web")) == []


# -- a real fleet --------------------------------------------------------------------------------

def _deploy(fleet, receiver: Receiver, comp: dict) -> None:
    """setconfig + update, in this process (the CLI's own functions; faster than two CLIs)."""
    revisions.set_config(fleet.store, parse_config(
        {"components": [comp], "notifications": notifications(receiver)}, "test"))
    deploy.update(fleet.store, ["web"], actor="tester")


def _events(receiver: Receiver, path: str = "/json") -> dict[str, dict]:
    return {json.loads(b)["id"]: json.loads(b) for p, _, b in receiver.got if p == path}


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv(N.ENV_BACKOFF, "0.2,1,120")  # the hosts inherit it


def test_fleet_notifies_once_through_a_receiver_outage_a_kill_and_a_failure(
        fleet, test_images, receiver, fast_retries):
    """One fleet for every scenario (host starts dominate the cost of this test)."""
    p = fleet.project
    r = lambda rev, name: f"{p}.web.r{rev}.{name}"  # noqa: E731
    fleet.start_all()
    _deploy(fleet, receiver, component(test_images, "v1", fleet.port))
    fleet.wait_done()
    # Three hosts saw r1 start and complete: one delivery of each, to each target.
    want = {r(1, "started"), r(1, "completed")}
    wait_for(lambda: set(receiver.ids()) == want == set(receiver.ids("/slack")), 20,
             f"r1 delivered: {receiver.ids()}")
    assert _events(receiver)[r(1, "started")]["actor"] == "tester"
    completed = _events(receiver)[r(1, "completed")]
    assert completed["duration"] is not None and completed["duration"] >= 0
    assert completed["image"].startswith(test_images["v1"] + "@sha256:")
    assert completed["text"].startswith(f"{p}/web: rollout of r1 (update) completed on every")

    # The receiver is down for the whole rollout of r2, which completes all the same.
    receiver.stop()
    _deploy(fleet, receiver, component(test_images, "v2", fleet.port))
    fleet.wait_done()
    assert {fleet.answers(h) for h in ("h1", "h2", "h3")} == {"v2"}
    # The host delivering "completed" dies (-9) while its delivery is pending; once its lease
    # expires another host takes the delivery over.
    owner_key = fleet.store.keys.notify_entry("web", 2, "completed") + "/owner"
    victim = json.loads(wait_for(lambda: fleet.etcd.get(owner_key), 20, "r2 claimed").value)[
        "machine"]
    fleet.kill9(victim)
    wait_for(lambda: (kv := fleet.etcd.get(owner_key)) and
             json.loads(kv.value)["machine"] != victim, 30, f"a new owner\n{fleet.logs()}")
    receiver.start()  # back up, some seconds later: everything arrives, once
    want |= {r(2, "started"), r(2, "completed")}
    wait_for(lambda: set(receiver.ids()) == want == set(receiver.ids("/slack")), 30,
             f"every event: {receiver.ids()}\n{fleet.logs()}")
    record = wait_for(lambda: (rec := _record(fleet.store, 2, "completed")) and all(
        t["state"] == "sent" for t in rec["targets"].values()) and rec, 10, "recorded sent")
    assert record["claimedBy"] == victim
    assert victim not in {t["by"] for t in record["targets"].values()}

    # A revision that never gets ready: the first host to try fails, the rollout halts.
    _deploy(fleet, receiver, component(test_images, "never_ready", fleet.port,
                                       readyTimeout=1.5))
    failed = wait_for(lambda: r(3, "halted") in receiver.ids() and
                      [i for i in receiver.ids() if ".r3.failed." in i], 40,
                      f"failed and halted\n{fleet.logs()}")
    event = _events(receiver)[failed[0]]
    assert event["machine"] != victim and "ready check" in event["error"]
    want |= {r(3, "started"), r(3, "halted"), failed[0]}
    wait_for(lambda: set(receiver.ids("/slack")) == want, 10, "the slack deliveries")
    assert receiver.ids() == {i: 1 for i in want}
    assert receiver.ids("/slack") == {i: 1 for i in want}
    for path, headers, body in receiver.got:
        if path == "/json":
            assert headers["x-hub-signature-256"] == N.sign(SECRET.encode(), body)

