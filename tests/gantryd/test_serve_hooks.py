"""The webhooks of `gantryd serve`: the registry's notifications (crafted envelopes posted to a
real serve on the real etcd, registry and dockerd; then the real registry sending them during
a rollout of 3 hosts under load) and the generic signed webhook."""
from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import uuid

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import loadgen  # scripts/
import rig
from fleet_helpers import HOSTS, ROOT, wait_for
from gantry.config import parse_config
from gantry_helpers import forget_local_images
from gantryd import revisions
from gantryd.serve import registry as R
from gantryd.serve.deliveries import seen_key
from gantryd.store import Store
from serve_helpers import Serve
from test_config_fuzz import json_values, mutate

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BLOB = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REGISTRY_HOOK, GENERIC_HOOK = "/v1/hooks/registry", "/v1/hooks/generic"


# -- helpers -----------------------------------------------------------------------------------

def manifest_digest(registry: str, path: str, tag: str) -> str:
    """The digest a registry answers for `path:tag` (`registry` as in image references)."""
    accept = ", ".join(sorted(R.MANIFEST_TYPES))
    resp = requests.head(f"http://{registry}/v2/{path}/manifests/{tag}",
                         headers={"Accept": accept}, timeout=10)
    resp.raise_for_status()
    return resp.headers["Docker-Content-Digest"]


def push(docker_client, source: str, repo: str, tag: str) -> None:
    docker_client.images.get(source).tag(repo, tag)
    for line in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in line, line


def event(path: str, tag: str | None, digest: str, *, action: str = "push",
          media: str = MANIFEST, host: str | None = rig.REGISTRY,
          event_id: str | None = None) -> dict:
    """One registry event as distribution writes it."""
    target = {"mediaType": media, "size": 1150, "digest": digest, "length": 1150,
              "repository": path, "url": f"http://{host}/v2/{path}/manifests/{digest}"}
    if tag is not None:
        target["tag"] = tag
    return {"id": event_id or str(uuid.uuid4()), "timestamp": "2024-01-01T00:00:00Z",
            "action": action, "target": target,
            "request": {"id": str(uuid.uuid4()), "addr": "127.0.0.1:4000", "host": host,
                        "method": "PUT", "useragent": "docker/20.10"},
            "actor": {}, "source": {"addr": "vm:5000", "instanceID": "x"}}


def snapshot(store: Store) -> list[tuple[str, bytes]]:
    """Every key of the project and of the hooks' seen ids, with its value."""
    kvs = store.etcd.get_prefix(f"/gantryd/projects/{store.project}/")[0]
    kvs += store.etcd.get_prefix("/gantryd/hooks/")[0]
    return sorted((kv.key, kv.value) for kv in kvs)


def set_config(store: Store, *components: dict) -> None:
    revisions.set_config(store, parse_config({"components": list(components)}))


@pytest.fixture
def hook_repo(docker_client, test_images, project):
    """A repository of this test alone in the session registry, with v1 pushed as `live`:
    (repo, path, digests by variant)."""
    path = f"gantry-test/hook-{project}"
    repo = f"{rig.REGISTRY}/{path}"
    push(docker_client, test_images["v1"], repo, "live")
    push(docker_client, test_images["v2"], repo, "v2")
    digests = {v: manifest_digest(rig.REGISTRY, path, t) for v, t in (("v1", "live"),
                                                                       ("v2", "v2"))}
    yield repo, path, digests
    forget_local_images(docker_client, repo)


def web(repo: str, name: str = "web", tag: str = "live", auto: bool = True) -> dict:
    return {"name": name, "repo": repo, "tag": tag, "autoUpdate": auto}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_signed(serve: Serve, data: dict, *, secret: str | None = None,
                headers: dict | None = None) -> requests.Response:
    body = json.dumps(data).encode()
    return requests.post(serve.url + GENERIC_HOOK, data=body, timeout=60, headers={
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(secret or serve.secret, body), **(headers or {})})


# The signing recipe of docs/serve.md, "Generic webhook".
CURL_RECIPE = """
secret=$(head -n1 "$SECRET_FILE")
sig=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
curl -fsS "$URL/v1/hooks/generic" -H 'Content-Type: application/json' \\
  -H "X-Hub-Signature-256: sha256=$sig" -H "X-Delivery-Id: build-7" --data-binary "$BODY"
"""


def no_secret_logged(serve: Serve) -> None:
    logs = serve.logs()
    assert serve.token not in logs and serve.secret not in logs


# -- matching (pure) ---------------------------------------------------------------------------

@pytest.mark.parametrize("repo, host, path, expected", [
    ("localhost:5000/team/app", "localhost:5000", "team/app", True),
    ("localhost:5000/team/app", "127.0.0.1:5000", "team/app", True),
    ("127.0.0.1:5000/team/app", "LOCALHOST:5000", "team/app", True),
    ("localhost:5000/team/app", "[::1]:5000", "team/app", True),
    ("localhost:5000/team/app", "localhost:5001", "team/app", False),
    ("localhost:5000/team/app", "localhost", "team/app", False),
    ("localhost:5000/team/app", "localhost:5000", "team/other", False),
    ("localhost:5000/team/app", "localhost:5000", "app", False),
    ("registry.example.com/app", "Registry.Example.com", "app", True),
    ("registry.example.com/app", "other.example.com", "app", False),
    ("localhost:5000/team/app", None, "team/app", True),
    ("nginx", "registry-1.docker.io", "library/nginx", True),
    ("team/app", "index.docker.io", "team/app", True),
])
def test_repo_matching(repo, host, path, expected):
    push_ = R.Push("id", host, path, "v1", "sha256:" + "0" * 64)
    assert R.matches(repo, push_) is expected


@pytest.mark.parametrize("changes, reason", [
    ({"action": "pull"}, "pull action: only pushes move a tag"),
    ({"action": "delete"}, "delete action: only pushes move a tag"),
    ({"media": BLOB}, f"push of a {BLOB}: not a manifest"),
    ({"media": "application/octet-stream"}, "push of a application/octet-stream: not a manifest"),
    ({"tag": None}, "manifest pushed without a tag"),
    ({"tag": "bad tag"}, "bad tag 'bad tag'"),
    ({"digest": "sha256:xyz"}, "bad digest 'sha256:xyz'"),
])
def test_ignored_events(changes, reason):
    data = {"tag": "live", "digest": "sha256:" + "a" * 64, **changes}
    ev = event("team/app", data.pop("tag"), data.pop("digest"), **data)
    assert R.push_of(ev) == reason


def test_push_of_an_index_with_a_tag():
    ev = event("team/app", "live", "sha256:" + "a" * 64, media=OCI_INDEX, event_id="e1")
    assert R.push_of(ev) == R.Push("e1", "localhost:5000", "team/app", "live",
                                   "sha256:" + "a" * 64)
    with pytest.raises(R.BadEnvelope):
        R.events({"Events": []})


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_event_is_a_push_or_a_reason(data):
    """No sender's JSON makes the parser fail: a mutated real event or any value."""
    real = event("team/app", "live", "sha256:" + "a" * 64)
    ev = data.draw(st.sampled_from([mutate(real, data), data.draw(json_values)]))
    assert isinstance(R.push_of(ev), (R.Push, str))


# -- registry hook: crafted envelopes ----------------------------------------------------------

def test_registry_push_updates_autoupdate_components_once(serve, store, hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo), web(repo, "manual", auto=False), web(repo, "pinned", tag="v2"))
    ev = event(path, "live", digests["v1"])
    answer = serve.post(REGISTRY_HOOK, {"events": [ev]})
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["events"]
    assert result["result"] == "handled"
    assert [(c["component"], c["result"]) for c in result["components"]] == [("web", "updated")]
    desired = store.desired("web")
    assert (desired.revision, desired.image) == (1, f"{repo}@{digests['v1']}")
    assert (desired.cause, desired.actor) == ("registry", f"registry@{rig.REGISTRY}")
    assert store.desired("manual") is None and store.desired("pinned") is None

    # The same event again (a redelivery): seen before.
    again = serve.post(REGISTRY_HOOK, {"events": [ev]}).json()["events"][0]
    assert (again["result"], again["reason"]) == ("ignored", "event seen before")
    # The same digest in a new event, the registry named by another loopback name: unchanged.
    other = event(path, "live", digests["v1"], host="127.0.0.1:" + rig.REGISTRY.split(":")[1])
    out = serve.post(REGISTRY_HOOK, {"events": [other]}).json()["events"][0]
    assert [c["result"] for c in out["components"]] == ["unchanged"]
    assert [d.revision for d in store.history("web")] == [1]
    no_secret_logged(serve)


def test_registry_ignores_pulls_blobs_untagged_and_unfollowed(serve, store, hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo), web(repo, "manual", auto=False))
    before = snapshot(store)
    d = digests["v1"]
    events = [event(path, "live", d, action="pull"), event(path, None, d, media=BLOB),
              event(path, None, d), event(path, "live", d, action="mount"),
              event(path, "other-tag", d), event(path, "live", d, host="localhost:1"),
              event("gantry-test/elsewhere", "live", d), "not an event"]
    answer = serve.post(REGISTRY_HOOK, {"events": events})
    assert answer.status_code == 200, answer.text
    results = answer.json()["events"]
    assert [r["result"] for r in results] == ["ignored"] * len(events)
    assert "no component with autoUpdate follows" in results[4]["reason"]
    assert snapshot(store) == before


def test_registry_hook_refuses_without_the_token(serve, store, hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo))
    before = snapshot(store)
    envelope = {"events": [event(path, "live", digests["v1"])]}
    assert serve.post(REGISTRY_HOOK, envelope, auth=False).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * len(serve.token)}
    assert serve.post(REGISTRY_HOOK, envelope, auth=False, headers=wrong).status_code == 401
    assert serve.post(REGISTRY_HOOK, {"Events": []}).status_code == 400
    assert snapshot(store) == before


def test_registry_stale_push_and_stopped_component_are_skipped(serve, store, etcd, hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo))
    before = snapshot(store)
    # `live` is v1 in the registry: an event saying it is v2 is about a push since moved past.
    stale = serve.post(REGISTRY_HOOK, {"events": [event(path, "live", digests["v2"])]}).json()
    (component,) = stale["events"][0]["components"]
    assert component["result"] == "skipped" and "not updated" in component["reason"]
    assert store.desired("web") is None
    seen = seen_key("/gantryd", "registry", stale["events"][0]["id"])
    assert [k for k, _ in snapshot(store)] == sorted([k for k, _ in before] + [seen])

    serve.post(REGISTRY_HOOK, {"events": [event(path, "live", digests["v1"])]})
    assert store.desired("web").revision == 1
    gantryd(etcd, "stop", store.project, "-c", "web")
    answer = serve.post(REGISTRY_HOOK, {"events": [event(path, "live", digests["v1"])]})
    assert answer.json()["events"][0]["components"][0]["result"] == "unchanged"
    push_v2 = {"events": [event(path, "v2", digests["v2"])]}
    set_config(store, web(repo, tag="v2"))
    (component,) = serve.post(REGISTRY_HOOK, push_v2).json()["events"][0]["components"]
    assert component["result"] == "skipped" and "stopped" in component["reason"]
    assert (store.desired("web").status, store.desired("web").revision) == ("stopped", 2)


def gantryd(etcd, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gantryd", "--etcd", ",".join(etcd.endpoints),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_failed_update_releases_the_event_and_busy_events_are_retried(serve, store, etcd,
                                                                      hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo))
    ev = event(path, "live", digests["v1"])
    # A serve whose Docker engine does not answer cannot resolve the tag: failed, and the
    # event is not remembered, so that its redelivery (to any serve) is handled.
    blind = Serve(etcd.endpoints, "--docker", f"tcp://127.0.0.1:{rig.free_port()}")
    try:
        answer = blind.post(REGISTRY_HOOK, {"events": [ev]})
        assert answer.status_code == 200, answer.text
        (component,) = answer.json()["events"][0]["components"]
        assert component["result"] == "failed", component
        assert store.etcd.get(seen_key("/gantryd", "registry", ev["id"])) is None
        assert store.desired("web") is None
    finally:
        blind.close()
    # Another request handling the same event right now (its pending claim): 503, retry.
    key = seen_key("/gantryd", "registry", ev["id"])
    lease = store.etcd.grant(60)
    store.etcd.put(key, json.dumps({"id": ev["id"], "state": "pending"}).encode(), lease)
    busy = serve.post(REGISTRY_HOOK, {"events": [ev]})
    assert busy.status_code == 503 and busy.json()["events"][0]["result"] == "busy"
    assert store.desired("web") is None
    store.etcd.revoke(lease)  # that request died: its claim expired
    done = serve.post(REGISTRY_HOOK, {"events": [ev]}).json()["events"][0]
    assert done["components"][0]["result"] == "updated"
    assert json.loads(store.etcd.get(key).value)["state"] == "done"


# -- generic hook ------------------------------------------------------------------------------

def test_generic_hook_needs_the_signature(serve, store, hook_repo):
    repo, _, _ = hook_repo
    set_config(store, web(repo))
    before = snapshot(store)
    data = {"project": store.project, "components": ["web"]}
    body = json.dumps(data).encode()
    for headers in ({}, {"X-Hub-Signature-256": "sha256=" + "0" * 64},
                    {"X-Hub-Signature-256": sign(serve.secret, body + b" ")},
                    {"X-Hub-Signature-256": sign(serve.secret + "x", body)},
                    {"X-Hub-Signature-256": sign(serve.secret, body)[7:]}):
        answer = requests.post(serve.url + GENERIC_HOOK, data=body, headers=headers, timeout=30)
        assert answer.status_code == 401, (headers, answer.text)
    # The bearer token is not a signature.
    assert serve.post(GENERIC_HOOK, data).status_code == 401
    for bad, status, message in (
            ({**data, "tga": "v2"}, 400, "unknown key 'tga'"),
            ({"project": store.project}, 400, '"components": expected a non-empty list'),
            ({**data, "components": ["web", "web"]}, 400, "named twice"),
            ({**data, "tag": "bad tag"}, 400, '"tag": expected a Docker tag'),
            ({**data, "components": ["wbe"]}, 400, 'did you mean "web"'),
            ({**data, "project": "no-such-project"}, 404, "has no configuration"),
            ({**data, "project": "../x"}, 404, "bad project name")):
        answer = post_signed(serve, bad)
        assert (answer.status_code, message in answer.json()["error"]) == (status, True), (
            bad, answer.text)
    answer = post_signed(serve, data, headers={"X-GitHub-Delivery": "x" * 201})
    assert answer.status_code == 400
    assert snapshot(store) == before
    no_secret_logged(serve)


def test_generic_hook_updates_once_per_delivery(serve, store, etcd, hook_repo):
    repo, path, digests = hook_repo
    set_config(store, web(repo))
    serve.post(REGISTRY_HOOK, {"events": [event(path, "live", digests["v1"])]})
    assert store.desired("web").revision == 1
    data = {"project": store.project, "components": ["web"], "tag": "v2"}
    delivery = str(uuid.uuid4())
    answer = post_signed(serve, data, headers={"X-GitHub-Delivery": delivery})
    assert answer.status_code == 200, answer.text
    assert answer.json()["components"]["web"] == {"image": f"{repo}@{digests['v2']}",
                                                  "revision": 2}
    again = post_signed(serve, data, headers={"X-GitHub-Delivery": delivery})
    assert (again.status_code, again.json()["result"]) == (200, "ignored")
    assert [d.revision for d in store.history("web")] == [1, 2]
    # Another sender's delivery header, signed with openssl and sent by curl (docs/serve.md).
    body = json.dumps({**data, "tag": "live"})
    answer = subprocess.run(["sh", "-c", CURL_RECIPE], capture_output=True, text=True, env={
        "PATH": "/usr/bin:/bin", "BODY": body, "SECRET_FILE": str(serve.base / "secret"),
        "URL": serve.url}, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["components"]["web"]["revision"] == 3
    rows = json.loads(gantryd(etcd, "history", store.project, "--json"))["components"]["web"]
    assert [(r["revision"], r["cause"], r["actor"]) for r in rows] == [
        (3, "webhook", "webhook:build-7"), (2, "webhook", f"webhook:{delivery}"),
        (1, "registry", f"registry@{rig.REGISTRY}")]
    table = gantryd(etcd, "history", store.project).splitlines()
    assert [line.split()[4] for line in table[2:5]] == ["webhook", "webhook", "registry"]
    # GitHub's ping when the hook is created: answered, nothing written.
    pong = post_signed(serve, {"zen": "hi"}, headers={"X-GitHub-Event": "ping"})
    assert pong.json() == {"result": "pong"}
    assert len(store.history("web")) == 3


# -- end to end: the real registry's notifications -------------------------------------------

@pytest.fixture
def notifying_registry(serve, tmp_path):
    """A second registry of this test, notifying `serve` of every event (with the token):
    its name as image references use it (`localhost:PORT`)."""
    addr = f"127.0.0.1:{rig.free_port()}"
    endpoint = rig.notification_endpoint("gantryd", serve.url + REGISTRY_HOOK, serve.token)
    proc = rig.start_registry(addr, tmp_path / "registry", [endpoint])
    yield "localhost:" + addr.rsplit(":", 1)[1]
    proc.terminate()
    proc.wait(timeout=10)


def test_registry_push_rolls_out_across_the_fleet_under_load(fleet, serve, notifying_registry,
                                                             docker_client, test_images):
    path = "gantry-test/app"
    repo = f"{notifying_registry}/{path}"
    try:
        push(docker_client, test_images["v1"], repo, "live")
        v1 = manifest_digest(notifying_registry, path, "live")
        # Before any config follows it, the push is only noted.
        wait_for(lambda: f"{v1}): ignored" in serve.logs(), 20, "the notification of v1")
        fleet.deploy_v1(test_images, repo=repo, tag="live", autoUpdate=True)
        targets = [fleet.address(h) for h in HOSTS]
        with loadgen.Load(targets, short_workers=2, timeout=10) as load:
            load.wait_for(lambda ld: all(ld.stats[t].sent >= 5 for t in targets), 20)
            push(docker_client, test_images["v2"], repo, "live")  # no gantryd command
            v2 = manifest_digest(notifying_registry, path, "live")
            wait_for(lambda: 2 in revisions.done(fleet.store, "web"), 90,
                     f"every host to run the push of v2\n{serve.logs()}\n{fleet.logs()}")
            load.wait_for(lambda ld: all(ld.stats[t].versions["v2"] >= 3 for t in targets), 20)
        assert load.failed == 0, load.errors()
        assert load.versions()["v1"] > 0 and load.versions()["v2"] > 0
        desired = fleet.store.desired("web")
        assert (desired.revision, desired.image) == (2, f"{repo}@{v2}")
        assert (desired.cause, desired.actor) == ("registry", f"registry@{notifying_registry}")
        assert sorted(fleet.acquired(2)) == ["h1", "h2", "h3"]
        assert {fleet.answers(h) for h in HOSTS} == {"v2"}
        no_secret_logged(serve)
    finally:
        forget_local_images(docker_client, repo)
