"""The whole HTTP surface of `gantryd serve` fuzzed against a real server on the session etcd
(as tests/test_bad_input.py fuzzes the proxy's control API): methods, paths (the real routes
with garbage segments, %-encodings, huge ones), query strings, headers (right, wrong and
malformed tokens and signatures) and bodies (JSON, junk, deep, oversized, chunked).

Every request gets a complete HTTP answer (never a dropped connection), never a 5xx (bar
wait_for's own 504 timeout), every error is a JSON `{"error": ...}`, and a refused request
writes nothing to etcd (the etcd revision is compared around each one)."""
from __future__ import annotations

import http.client
import json
import re
import socket
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_helpers import component
from gantry.config import parse_config
from gantryd import deploy, revisions
from gantryd.etcd import Etcd
from gantryd.serve.app import MAX_BODY
from gantryd.store import Store
from serve_helpers import Serve
from test_config_fuzz import json_values, mutate

PROJECT = "fuzz-serve"
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def target(etcd, test_images):
    """A served project with a config and one desired revision (no host: wait_for waits),
    the server, and an etcd client to watch the revision with."""
    client = Etcd(etcd.endpoints)
    store = Store(client, PROJECT)
    web = component(test_images, "v1")
    revisions.set_config(store, parse_config({"components": [web, {**web, "name": "api",
                                                                    "ports": []}]}))
    deploy.update(store, ["web"], actor="fuzz")
    serve = Serve(etcd.endpoints)
    yield serve, client
    serve.close()
    client.close()


# -- requests ------------------------------------------------------------------------------

names = (st.sampled_from([PROJECT, "web", "api", "nope", "", ".", "..", "a" * 300, "%ff", "a b",
                          "a/b", "web@1", "-x", "\u00e9", "\x00"])
         | st.text(max_size=12))
segments = names.map(lambda n: quote(n, safe=""))
# (method, route) of every module: this one's API, the web page, the webhooks, the metrics.
ROUTES = [("GET", "/v1/projects"), ("GET", "/v1/projects/{p}"),
          ("GET", "/v1/projects/{p}/components/{c}"), ("GET", "/v1/projects/{p}/history"),
          ("GET", "/v1/projects/{p}/components/{c}/history"), ("GET", "/v1/wait_for"),
          ("POST", "/v1/projects/{p}/update"), ("POST", "/v1/projects/{p}/rollback"),
          ("GET", "/"), ("GET", "/projects/{p}"), ("GET", "/ui/projects/{p}"), ("GET", "/ui/{c}"),
          ("POST", "/v1/hooks/registry"), ("POST", "/v1/hooks/generic"), ("GET", "/metrics")]
odd_paths = st.one_of(
    st.sampled_from(["/", "//v1//projects", "/v1/projects/", "/v1/projects/%2F",
                     f"/v1/projects/{PROJECT}%2Fupdate", "/v1/%70rojects", "/%00", "/v1/..",
                     f"/v1/projects/{PROJECT}/components/web/history/x", "*",
                     "http://x/v1/projects", "/v1/projects/" + "a" * 20000]),
    st.text(max_size=30).map(lambda t: "/" + quote(t, safe="/")),
    st.binary(max_size=12).map(lambda b: "/v1/projects/" + quote(b, safe="")),
    st.lists(st.sampled_from(["v1", "projects", PROJECT, "components", "web", "history",
                              "update", "rollback", "wait_for", "..", "%2F", ""]),
             max_size=6).map(lambda parts: "/" + "/".join(parts)),
)
methods = (st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
           | st.from_regex(r"[A-Z]{1,12}", fullmatch=True))
values = (st.sampled_from([PROJECT, "web", "api", "1", "2", "0", "-1", "0.05", "901", "nan",
                           "inf", "1e3", "", "%ff", "99999999999999999999999"])
          | st.text(max_size=10))
# wait_for with a timeout that is not refused is bounded by a short one: the run stays short.
SHORT = st.sampled_from(["0", "0.05", "0.2"])
odd_queries = st.dictionaries(st.sampled_from(["project", "component", "revision", "timeout",
                                               "n", "history", "x", ""]), values, max_size=5)
wait_queries = st.fixed_dictionaries(
    {"project": st.just(PROJECT) | values, "component": st.sampled_from(["web", "api"]) | values},
    optional={"revision": st.sampled_from(["1", "2", "1000"]) | values, "timeout": values,
              "n": values})
BODY_KEYS = ["components", "tag", "to", "actor", "x"]
valid_bodies = st.fixed_dictionaries(
    {"components": st.lists(st.sampled_from(["web", "api"]), min_size=1, max_size=2,
                            unique=True)},
    optional={"tag": st.sampled_from(["v1", "v2", "no-such"]), "to": st.sampled_from([1, 2, 50]),
              "actor": st.sampled_from(["ci", "fuzz job 1"])})
bodies_json = st.one_of(
    st.fixed_dictionaries({"components": st.lists(st.sampled_from(["web", "api", "nope"])
                                                  | st.text(max_size=6), max_size=3)},
                          optional={"tag": st.sampled_from(["v1", "v2", "no-such", "v 1", ""])
                                    | st.text(max_size=8) | st.integers(),
                                    "to": st.integers(-2, 5) | st.booleans() | st.text(max_size=3),
                                    "actor": st.text(max_size=8) | st.none() | st.integers()}),
    st.dictionaries(st.sampled_from(BODY_KEYS), json_values, max_size=4),
    json_values,
)


def _body(data: st.DataObject) -> bytes | None:
    kind = data.draw(st.sampled_from(["none", "valid", "valid", "valid", "json", "json", "json",
                                      "mutated", "mutated", "bytes", "deep", "big"]))
    if kind == "none":
        return None
    if kind == "valid":
        return json.dumps(data.draw(valid_bodies)).encode()
    if kind == "json":
        return json.dumps(data.draw(bodies_json)).encode()
    if kind == "mutated":
        return json.dumps(mutate({"components": ["web"], "tag": "v1", "to": 1}, data)).encode()
    if kind == "bytes":
        return data.draw(st.binary(max_size=64))
    if kind == "deep":
        return b'{"components": ' + b"[" * data.draw(st.sampled_from([900, 100_000]))
    return b"x" * data.draw(st.sampled_from([MAX_BODY, MAX_BODY + 1, 2 * MAX_BODY]))


def _headers(data: st.DataObject, serve: Serve, authed: bool) -> list[tuple[str, str]]:
    right = f"Bearer {serve.token}"
    auth = right if authed and data.draw(st.integers(0, 4)) else data.draw(st.sampled_from([
        None, None, *[f"Bearer {serve.token}"] * 5, "Bearer",
        f"Bearer {serve.token[:-1]}", f"bearer  {serve.token} ", f"Basic {serve.token}",
        f"Bearer {serve.token}\u00e9", "Bearer " + "x" * 5000]))
    out = [("Authorization", auth)] if auth is not None else []
    out += data.draw(st.lists(st.tuples(
        st.sampled_from(["Content-Type", "X-Hub-Signature-256", "Accept", "X-Forwarded-For",
                         "Cookie"]) | st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}",
                                                              fullmatch=True),
        st.sampled_from(["application/json", "text/plain", "sha256=00", "", "*/*"])
        | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=20)),
        max_size=3))
    return [(k, v) for k, v in out
            if k.lower() not in ("content-length", "transfer-encoding", "host", "connection",
                                 "expect")]


def _raw(method: str, target: str, headers: list[tuple[str, str]], body: bytes | None,
         chunked: bool) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    payload = b""
    if body is not None and chunked:
        lines.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        for i in range(0, len(body), step):
            part = body[i:i + step]
            payload += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        payload += b"0\r\n\r\n"
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _send(serve: Serve, raw: bytes, method: str) -> tuple[int, str, bytes]:
    """One request on a fresh connection: (status, content type, body). A connection closed
    without a complete answer raises (and fails the test)."""
    with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.getheader("content-type", ""), response.read()


def _waits(path: str) -> bool:
    """Is this wait_for (as the server splits paths)?"""
    return [p for p in path.split("?")[0].split("/") if p] == ["v1", "wait_for"]


def _check(method: str, path: str, status: int, kind: str, raw: bytes) -> None:
    assert status < 500 or (status == 504 and _waits(path)), (method, path[:200], status,
                                                              raw[:300])
    if method == "HEAD":
        assert raw == b""
        return
    if kind != "application/json" and not path.startswith("/v1/"):
        return  # the web page (errors too), its assets, the metrics
    answer = json.loads(raw)
    assert isinstance(answer, dict), raw[:300]
    if status >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], raw[:300]
        assert "internal error" not in answer["error"]


def _request(data: st.DataObject) -> tuple[str, str, bool]:
    """(method, path with query, whether to send the right token mostly): a write to the
    served project, a real route with its own method, or anything."""
    kind = data.draw(st.sampled_from(["odd", "odd", "write", "write", "write", "wait", "route",
                                      "route", "route", "route"]))
    if kind == "odd":
        return data.draw(methods), data.draw(odd_paths) + _query(data.draw(odd_queries)), False
    if kind == "write":
        return "POST", data.draw(st.sampled_from([f"/v1/projects/{PROJECT}/update",
                                                  f"/v1/projects/{PROJECT}/rollback"])), True
    method, route = ("GET", "/v1/wait_for") if kind == "wait" else \
        data.draw(st.sampled_from(ROUTES))
    if data.draw(st.integers(0, 9)) == 0:
        method = data.draw(methods)
    path = route.format(p=data.draw(st.just(PROJECT) | segments),
                        c=data.draw(st.sampled_from(["web", "api", "page.css"]) | segments))
    query = data.draw(wait_queries if route == "/v1/wait_for" else
                      st.just({}) | st.fixed_dictionaries({}, optional={"n": values,
                                                                        "history": values}))
    if route == "/v1/wait_for" and re.fullmatch(r"[0-9.]*", query.get("timeout", "")):
        query["timeout"] = data.draw(SHORT)  # absent or valid: kept short
    return method, path + _query(query), False


def _query(query: dict[str, str]) -> str:
    return "?" + urlencode(query) if query else ""


@FUZZ
@given(data=st.data())
def test_every_request_gets_a_4xx_json_or_2xx_and_refusals_write_nothing(target, data):
    serve, client = target
    method, path, authed = _request(data)
    body = _body(data)
    headers = _headers(data, serve, authed)
    raw = _raw(method, path, headers, body, data.draw(st.booleans()))
    before = client.revision()
    status, kind, answer = _send(serve, raw, method)
    _check(method, path, status, kind, answer)
    if not (200 <= status < 300 and method == "POST"):
        assert client.revision() == before, (method, path[:200], status, answer[:300])


@pytest.mark.parametrize("value", ["\x850", "text/plain;\x0bq=1", "a\x1cb"])
def test_a_content_type_twisted_cannot_store_is_a_400(target, value):
    """Found by the fuzz: Twisted stores Content-Type through the email package, which
    raises on a character it reads as a line break; the server answered nothing."""
    serve, client = target
    headers = [("Content-Type", value), ("Authorization", f"Bearer {serve.token}")]
    before = client.revision()
    status, kind, answer = _send(serve, _raw("POST", f"/v1/projects/{PROJECT}/update",
                                             headers, b"{}", False), "POST")
    assert (status, kind) == (400, "application/json"), answer
    assert "Content-Type" in json.loads(answer)["error"]
    assert client.revision() == before


def test_the_fuzz_left_no_trace(target):
    """After the fuzz: the same server answers, logged no traceback and no secret."""
    serve, _ = target
    assert serve.proc.poll() is None
    assert serve.get(f"/v1/projects/{PROJECT}").status_code == 200
    log = serve.logs()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert serve.token not in log and serve.secret not in log
