"""The JSON API of `gantryd serve` (gantryd/serve/api.py, docs/serve.md) end to end: a real
`gantryd serve` subprocess on the session etcd; for rollouts, a real fleet of simulated
hosts on the real dockerd and registry. Every refusal is checked to leave etcd as it was."""
from __future__ import annotations

import datetime
import ipaddress
import threading
from typing import Any

import requests

from fleet_helpers import HOSTS, component, wait_for
from gantry.config import parse_config
from gantryd import revisions
from serve_helpers import Serve


def _set_config(store, *components: dict[str, Any]) -> None:
    revisions.set_config(store, parse_config({"components": list(components)}))


def _tag(test_images: dict[str, str], variant: str) -> str:
    return test_images[variant].rsplit(":", 1)[1]


def _refused(serve, store, method: str, path: str, status: int, fragment: str,
             **kw: Any) -> dict:
    """`method path` answers `status` with an error naming `fragment`, and writes nothing."""
    before = store.etcd.revision()
    reply = requests.request(method, serve.url + path, timeout=30, **kw)
    assert reply.status_code == status, (method, path, reply.status_code, reply.text)
    error = reply.json()["error"]
    assert fragment in error, (fragment, error)
    assert store.etcd.revision() == before, f"{method} {path} wrote to etcd"
    return reply.json()


def test_status_documents_and_every_refusal_writes_nothing(serve, store, test_images):
    web = component(test_images, "v1")
    _set_config(store, web, {**web, "name": "worker", "ports": []})
    p = store.project

    assert p in serve.get("/v1/projects").json()["projects"]
    doc = serve.get(f"/v1/projects/{p}").json()
    assert doc["project"] == p and [c["name"] for c in doc["components"]] == ["web", "worker"]
    web_doc = doc["components"][0]
    assert web_doc["desired"] is None and web_doc["machines"] == [] and web_doc["status"] == "-"
    assert {"slots", "progress", "halted", "freeze", "lastDone"} <= set(web_doc)
    assert serve.get(f"/v1/projects/{p}/components/worker").json()["name"] == "worker"

    # Writes: without the token, with a wrong one, then bad bodies with the right one.
    auth = serve.auth()
    update = f"/v1/projects/{p}/update"
    body = {"json": {"components": ["web"]}}
    _refused(serve, store, "POST", update, 401, "bearer token", **body)
    _refused(serve, store, "POST", update, 401, "bearer token",
             headers={"Authorization": "Bearer " + "0" * len(serve.token)}, **body)
    _refused(serve, store, "POST", update, 401, "bearer token",
             headers={"Authorization": serve.token}, **body)
    _refused(serve, store, "POST", f"/v1/projects/{p}/rollback", 401, "bearer token", **body)
    for payload, status, fragment in [
            ({}, 400, "components: required"),
            ({"components": "web"}, 400, "components must be a non-empty list"),
            ({"components": []}, 400, "components must be a non-empty list"),
            ({"components": [1]}, 400, "components[0]"),
            ({"components": ["web", "web"]}, 400, "named twice"),
            ({"components": ["web"], "tags": "v2"}, 400, "unknown field 'tags'"),
            ({"components": ["web"], "tag": "v 2"}, 400, "tag must be"),
            ({"components": ["web"], "actor": "\n"}, 400, "actor must be"),
            ({"components": ["wbe"]}, 404, 'did you mean "web"'),
            ({"components": ["../x"]}, 404, "bad component name"),
            ({"components": ["web"], "tag": "no-such-tag"}, 409, "cannot resolve image")]:
        _refused(serve, store, "POST", update, status, fragment, headers=auth, json=payload)
    _refused(serve, store, "POST", update, 400, "not valid JSON", headers=auth, data=b"{")
    _refused(serve, store, "POST", update, 400, "JSON object", headers=auth, data=b"[1]")
    _refused(serve, store, "POST", update, 413, "over", headers=auth, data=b" " * (2 << 20))
    _refused(serve, store, "POST", "/v1/projects/nope-x/update", 404, "no such project",
             headers=auth, **body)
    rollback = f"/v1/projects/{p}/rollback"
    _refused(serve, store, "POST", rollback, 409, "never updated", headers=auth, **body)
    _refused(serve, store, "POST", rollback, 400, "to: goes with one component", headers=auth,
             json={"components": ["web", "worker"], "to": 1})
    _refused(serve, store, "POST", rollback, 400, "to must be an integer", headers=auth,
             json={"components": ["web"], "to": True})

    # Reads: unknown things are 404, bad parameters 400 naming them, other methods 405.
    for path, status, fragment in [
            ("/v1/projects/nope-x", 404, "no such project"),
            ("/v1/projects/%2E%2E", 404, "bad project name"),
            (f"/v1/projects/{p}/components/nope", 404, "no component named"),
            (f"/v1/projects/{p}/components/web%2Fhistory", 404, "bad component name"),
            (f"/v1/projects/{p}/history?n=0", 400, "n must be an integer >= 1"),
            (f"/v1/projects/{p}/history?limit=1", 400, "unknown query parameter 'limit'"),
            ("/v1/wait_for?component=web", 400, "project= is required"),
            (f"/v1/wait_for?project={p}&component=web&timeout=901", 400, "timeout must be"),
            (f"/v1/wait_for?project={p}&component=web&timeout=-1", 400, "timeout must be"),
            (f"/v1/wait_for?project={p}&component=web&revision=x", 400, "revision must be"),
            (f"/v1/wait_for?project={p}&component=web", 404, "never updated"),
            ("/v1/nothing", 404, "no such resource")]:
        _refused(serve, store, "GET", path, status, fragment)
    _refused(serve, store, "DELETE", f"/v1/projects/{p}", 405, "not allowed")

    # An update through the API with no host: written, and wait_for times out (504)...
    first = serve.post(update, {"components": ["web"], "actor": "ci-job-7"}).json()
    assert first["components"]["web"]["revision"] == 1
    assert first["components"]["web"]["actor"] == "ci-job-7 via api@127.0.0.1"
    wait = first["components"]["web"]["waitFor"] + "&timeout=0.5"
    reply = serve.get(wait)
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"] == "timed out after 0.5 s waiting for a live host"
    reply = serve.get(f"/v1/wait_for?project={p}&component=web&revision=5&timeout=0")
    assert reply.status_code == 504 and "revision 5 to be written" in reply.json()["error"]
    # ... and once a newer revision is written, the one waited for was superseded (409).
    waiting = _background(lambda: serve.get(wait.replace("timeout=0.5", "timeout=60")))
    second = serve.post(update, {"components": ["web"], "tag": _tag(test_images, "v2")})
    assert second.status_code == 200, second.text
    reply = waiting.result()
    assert reply.status_code == 409, reply.text
    assert reply.json()["status"] == "superseded" and reply.json()["supersededBy"] == 2

    history = serve.get(f"/v1/projects/{p}/components/web/history?n=1").json()
    assert [r["revision"] for r in history["components"]["web"]] == [2]
    assert history["config"][0]["added"] == ["web", "worker"]
    assert set(serve.get(f"/v1/projects/{p}/history").json()["components"]) == {"web", "worker"}
    assert serve.token not in serve.logs() and serve.secret not in serve.logs()


class _background:
    """A call in a thread; `result()` waits for it (bounded)."""

    def __init__(self, fn):
        self.out: list = []
        self.thread = threading.Thread(target=lambda: self.out.append(fn()), daemon=True)
        self.thread.start()

    def result(self, timeout: float = 90):
        self.thread.join(timeout)
        assert self.out, "the call did not finish"
        return self.out[0]


def test_update_wait_for_failure_and_rollback_through_the_api(fleet, serve, test_images):
    p = fleet.project
    fleet.deploy_v1(test_images)  # revision 1: v1 on h1, h2, h3

    # The update through the API, and wait_for long-polling until the 3 hosts are done.
    written = serve.post(f"/v1/projects/{p}/update",
                         {"components": ["web"], "tag": _tag(test_images, "v2")})
    assert written.status_code == 200, written.text
    revision = written.json()["components"]["web"]["revision"]
    assert revision == 2
    done = serve.get(f"/v1/wait_for?project={p}&component=web&revision=2&timeout=120",
                     timeout=150)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "done" and done.json()["error"] is None
    assert {(h["machine"], h["status"], h["revision"]) for h in done.json()["hosts"]} == {
        (h, "ready", 2) for h in HOSTS}
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}

    # A version that never gets ready: 409 naming the host and its error; the fleet halts.
    written = serve.post(f"/v1/projects/{p}/update",
                         {"components": ["web"], "tag": _tag(test_images, "never_ready")})
    assert written.json()["components"]["web"]["revision"] == 3
    failed = serve.get(f"/v1/wait_for?project={p}&component=web&timeout=120", timeout=150)
    assert failed.status_code == 409, failed.text
    doc = failed.json()
    assert doc["status"] == "failed" and doc["revision"] == 3
    assert doc["failed"]["machine"] in HOSTS and doc["failed"]["error"]
    assert doc["error"] == f"rollout failed on {doc['failed']['machine']}: " \
                           f"{doc['failed']['error']}"
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}

    # Rollback through the API: back to revision 2 (the last stable one), as revision 4.
    back = serve.post(f"/v1/projects/{p}/rollback", {"components": ["web"]})
    assert back.status_code == 200, back.text
    assert back.json()["components"]["web"] | {"image": None, "waitFor": None} == {
        "revision": 4, "cause": "rollback", "source": 2, "actor": "api@127.0.0.1",
        "image": None, "waitFor": None}
    done = serve.get(back.json()["components"]["web"]["waitFor"] + "&timeout=120",
                     timeout=150)
    assert done.status_code == 200, done.text
    assert {fleet.answers(h) for h in HOSTS} == {"v2"}

    # Earlier revisions keep their verdicts; the history records who did what.
    assert serve.get(f"/v1/wait_for?project={p}&component=web&revision=3").status_code == 409
    earlier = serve.get(f"/v1/wait_for?project={p}&component=web&revision=2").json()
    assert earlier["status"] == "done" and earlier["supersededBy"] == 4
    rows = serve.get(f"/v1/projects/{p}/components/web/history").json()["components"]["web"]
    assert [(r["revision"], r["actor"], r["cause"]) for r in rows[:3]] == [
        (4, "api@127.0.0.1", "rollback to r2"), (3, "api@127.0.0.1", "update"),
        (2, "api@127.0.0.1", "update")]
    state = serve.get(f"/v1/projects/{p}").json()["components"][0]
    assert state["desired"]["revision"] == 4 and state["progress"]["done"] is True
    assert len(state["machines"]) == 3 and state["lastDone"]["revision"] == 4


def test_writes_are_refused_without_a_token_file(etcd, store, test_images):
    _set_config(store, component(test_images, "v1"))
    s = Serve(etcd.endpoints, token=False)
    try:
        before = store.etcd.revision()
        reply = s.post(f"/v1/projects/{store.project}/update", {"components": ["web"]},
                       auth=False, headers={"Authorization": "Bearer anything"})
        assert reply.status_code == 403 and "--token-file" in reply.json()["error"]
        assert store.etcd.revision() == before
    finally:
        s.close()


def test_a_long_poll_does_not_hold_up_shutdown(etcd, serve, store, test_images):
    _set_config(store, component(test_images, "v1"))
    serve.post(f"/v1/projects/{store.project}/update", {"components": ["web"]})
    before = _watches_started(etcd)
    url = f"/v1/wait_for?project={store.project}&component=web&timeout=900"
    waiting = _background(lambda: _answer(serve, url))
    # Held: its etcd watch is up (etcd counts the watch streams it started).
    wait_for(lambda: _watches_started(etcd) > before, 20, "the long poll's etcd watch")
    serve.proc.terminate()
    assert serve.proc.wait(timeout=20) == 0  # not killed: it stopped by itself, promptly
    assert waiting.result() in (503, "dropped")


def _answer(serve, path: str):
    try:
        return serve.get(path, timeout=60).status_code
    except requests.ConnectionError:
        return "dropped"  # the server went away before answering: fine at shutdown


def _watches_started(etcd) -> int:
    """How many watch streams the session etcd has started so far (its own metrics)."""
    text = requests.get(f"http://{etcd.endpoints[0]}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith(
        'grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch"'))
    return int(float(line.split()[-1]))


def _self_signed(base) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made now (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gantryd serve test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = base / "cert.pem", base / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls(etcd, store, test_images, tmp_path):
    _set_config(store, component(test_images, "v1"))
    cert, key = _self_signed(tmp_path)
    s = Serve(etcd.endpoints, "--tls-cert", cert, "--tls-key", key)
    try:
        assert "listening on https://" in s.logs()
        https = s.url.replace("http://", "https://")
        reply = requests.get(f"{https}/v1/projects/{store.project}", verify=cert, timeout=30)
        assert reply.status_code == 200 and reply.json()["project"] == store.project
        reply = requests.post(f"{https}/v1/projects/{store.project}/update", verify=cert,
                              json={"components": ["web"]}, headers=s.auth(), timeout=30)
        assert reply.json()["components"]["web"]["revision"] == 1
        try:  # plain HTTP on the TLS port gets no answer
            plain = requests.get(f"{s.url}/v1/projects", timeout=10).status_code
        except requests.ConnectionError:
            plain = None
        assert plain in (None, 400)
    finally:
        s.close()
