"""proxy.http, the small HTTP/1.1 server of the control API and /metrics: parsing on an
in-memory transport, then curl and the daemon's own imports against the real daemon."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from proxy.http import MAX_BODY, HTTPFactory, Request, Response
from proxy_servers import free_port


class Recorder:
    """A handler that answers with what it was asked; `hold` keeps answers back."""

    def __init__(self, hold: bool = False):
        self.requests: list[Request] = []
        self.pending: list[defer.Deferred] = []
        self.hold = hold

    def __call__(self, request: Request):
        self.requests.append(request)
        response = Response(200, json.dumps({
            "method": request.method, "segments": [s.decode() for s in request.segments],
            "body": request.body.decode()}).encode())
        if not self.hold:
            return response
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: response)


def _connect(handler):
    channel = HTTPFactory(handler).buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `raw`: (status, headers, body) each, by Content-Length."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if status == 100:
            out.append((status, headers, b""))
            continue
        length = int(headers["content-length"])
        out.append((status, headers, raw[:length]))
        raw = raw[length:]
    return out


def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    handler = Recorder(hold=True)
    channel, transport = _connect(handler)
    channel.dataReceived(b"PUT /routes/a%2Fb HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{}\n"
                         b"GET /routes?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.method for r in handler.requests] == ["PUT"]  # the second waits its turn
    assert transport.value() == b""
    handler.pending[0].callback(None)
    assert [r.method for r in handler.requests] == ["PUT", "GET"]
    handler.pending[1].callback(None)
    answers = _answers(transport.value())
    assert [json.loads(body) for _, _, body in answers] == [
        {"method": "PUT", "segments": ["routes", "a/b"], "body": "{}\n"},
        {"method": "GET", "segments": ["routes"], "body": ""}]
    assert all("connection" not in headers for _, headers, _ in answers)
    assert Request("GET", "http://x/routes/a%20b?y", "HTTP/1.1", {}).segments == \
        [b"routes", b"a b"]  # absolute-form
    assert transport.connected  # kept alive


def test_a_body_split_over_reads_chunked_and_after_100_continue():
    handler = Recorder()
    channel, transport = _connect(handler)
    body = b'{"k": "' + b"v" * 2000 + b'"}'
    channel.dataReceived(b"PUT /r HTTP/1.1\r\nExpect: 100-continue\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"  # curl waits for this
    channel.dataReceived(body[:100])
    assert handler.requests == []
    channel.dataReceived(body[100:])
    assert handler.requests[-1].body == body
    channel.dataReceived(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert handler.requests[-1].body == b"hello, world"
    assert [status for status, _, _ in _answers(transport.value())] == [100, 200, 200]


@pytest.mark.parametrize("raw, status", [
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET /" + b"a" * (70 * 1024), 431),
])
def test_malformed_requests_get_an_error_and_the_connection_closes(raw, status):
    handler = Recorder()
    channel, transport = _connect(handler)
    channel.dataReceived(raw)
    [(got, headers, body)] = _answers(transport.value())
    assert (got, headers["connection"]) == (status, "close") and body
    assert handler.requests == [] and transport.disconnecting
    channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # nothing more is read from it
    assert handler.requests == []


def test_http10_closes_head_has_no_body_and_a_failing_handler_is_a_500():
    channel, transport = _connect(Recorder())
    channel.dataReceived(b"HEAD /ping HTTP/1.1\r\n\r\n")
    raw = transport.value()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: " in raw and not raw.endswith(b"0\r\n\r\n")
    channel.dataReceived(b"GET /ping HTTP/1.0\r\n\r\n")
    assert _answers(transport.value()[len(raw):])[0][1]["connection"] == "close"
    assert transport.disconnecting

    def broken(request):
        raise RuntimeError("boom")

    channel, transport = _connect(broken)
    channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    [(status, _, body)] = _answers(transport.value())
    assert status == 500 and b"boom" in body and not transport.disconnecting


def test_a_caller_that_hangs_up_before_its_answer_gets_nothing_written():
    handler = Recorder(hold=True)
    channel, transport = _connect(handler)
    channel.dataReceived(b"POST /routes/x/drain HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    channel.connectionLost(None)
    assert handler.requests[0].disconnected
    handler.pending[0].callback(None)
    assert transport.value() == b""


def test_curl_drives_the_control_api_and_scrapes_metrics(make_proxy, echo):
    """A user's curl against the real daemon: a body over 1 KB (curl sends Expect:
    100-continue), a chunked upload, keep-alive over two URLs, and /metrics."""
    metrics = f"127.0.0.1:{free_port()}"
    proxy = make_proxy("--metrics", metrics)
    listen = f"127.0.0.1:{free_port()}"
    body = json.dumps({"listen": listen, "backends": [{"address": echo.address}],
                       "kind": "tcp"})
    padded = body[:-1] + " " * 1500 + "}"  # over curl's 1 KB Expect threshold
    curl = ["curl", "-sS", "--unix-socket", proxy.socket_path, "-H",
            "Content-Type: application/json"]
    put = subprocess.run(curl + ["-X", "PUT", "--data-binary", padded, "http://x/routes/web"],
                         capture_output=True, text=True, timeout=30)
    assert put.returncode == 0 and json.loads(put.stdout)["route"]["listen"] == listen, put
    other = f"127.0.0.1:{free_port()}"
    chunked = subprocess.run(
        curl + ["-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                "http://x/routes/web2"],
        input=body.replace(listen, other), capture_output=True, text=True, timeout=30)
    assert chunked.returncode == 0, chunked
    assert json.loads(chunked.stdout)["route"]["listen"] == other, chunked
    # Two URLs on one connection: the second reports no new connect.
    both = subprocess.run(curl + ["-w", "%{http_code} %{num_connects}\\n",
                                  "http://x/routes/web", "http://x/routes/nope"],
                          capture_output=True, text=True, timeout=30)
    first, first_code, second, second_code = both.stdout.strip().split("\n")
    assert json.loads(first)["listen"] == listen and first_code == "200 1"
    assert "error" in json.loads(second) and second_code == "404 0"
    assert proxy.client.route("web")["listen"] == listen
    scrape = subprocess.run(["curl", "-sS", "-i", f"http://{metrics}/metrics"],
                            capture_output=True, text=True, timeout=30)
    assert scrape.stdout.startswith("HTTP/1.1 200 OK")
    assert 'gantry_proxy_route_listening{route="web"} 1.0' in scrape.stdout
    post = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                           f"http://{metrics}/metrics"], capture_output=True, text=True,
                          timeout=30)
    assert post.stdout == "405"


def test_the_daemon_leaves_out_what_it_never_uses(make_proxy):
    """What an idle proxy's memory holds: no web framework, no HTTP client, no TLS stack of
    Twisted's, no cookie jar (about 6 MB of resident memory together)."""
    proxy = make_proxy(env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert proxy.client.routes() == []
    with open(proxy.log_path) as f:
        imported = {line.rsplit("|", 1)[1].strip() for line in f if line.startswith("import ")}
    assert {"twisted.internet.epollreactor", "proxy.http", "proxy.router"} <= imported
    for module in ("twisted.web", "http.client", "http.cookiejar", "urllib.request", "cryptography",
                   "email.parser", "prometheus_client", "yaml"):
        assert module not in imported, module
