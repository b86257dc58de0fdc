"""The web page of `gantryd serve` (gantryd/serve/page.py): the static tables as plain HTTP
sees them (everything escaped), its failures, and a real browser (Debian's chromium through
selenium) following a 3-host rollout live, without reloading. The browser test keeps a
screenshot in $GANTRY_ARTIFACTS (default: test-artifacts/ at the repository root)."""
from __future__ import annotations

import contextlib
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from gantry.config import parse_config
from gantryd.store import Desired, MachineStatus

from fleet_helpers import HOSTS, ROOT, component
from rig import free_port
from serve_helpers import Serve

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DIGEST = "sha256:" + "ab" * 32
EVIL = "<script>alert('x')</script> & \"quoted\""


class Links(HTMLParser):
    """Every src/href of a page and every <script> element's inline text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def links(text: str) -> Links:
    parser = Links()
    parser.feed(text)
    return parser


@pytest.fixture
def stored(store):
    """A project with two hosts written straight to etcd: h1 on the desired revision, h2
    failed with an error (and an actor) full of markup."""
    config = parse_config({"components": [
        {"name": "web", "repo": "localhost:5000/x/app", "tag": "v1"}]})
    store.set_config(config)
    comp = config.components[0]
    image = f"localhost:5000/x/app@{DIGEST}"
    store.change_desired(["web"], lambda name, current: Desired(
        "ready", 1, image, comp.spec_hash(), comp.to_dict(), "2026-01-01T00:00:00Z",
        actor=EVIL, cause="update"))
    lease = store.etcd.grant(60)
    store.put_machine("web", MachineStatus("h1", "ready", 1, image, comp.spec_hash(),
                                           since="2026-01-01T00:00:05Z"), lease)
    store.put_machine("web", MachineStatus("h2", "failed", 1, None, None,
                                           since="2026-01-01T00:00:06Z", error=EVIL), lease)
    yield store
    store.etcd.revoke(lease)


def test_page_is_static_html_with_everything_escaped(stored, serve):
    project = stored.project
    index = serve.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert f'href="/projects/{project}"' in index.text

    page = serve.get(f"/projects/{project}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    # The tables are there without any script: every host, its version, status and since.
    h1 = re.search(r'<tr [^>]*data-machine="h1"[^>]*>.*?</tr>', text, re.S)
    assert h1 and 'data-version="v1@' + "ab" * 6 + '"' in h1.group(0)
    assert "ready" in h1.group(0) and "2026-01-01T00:00:05Z" in h1.group(0)
    h2 = re.search(r'<tr [^>]*data-machine="h2"[^>]*>.*?</tr>', text, re.S)
    assert h2 and "failed" in h2.group(0)
    # Untrusted text shows as text: in cells and in attributes.
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;"
    assert escaped in h2.group(0)
    assert "<script>alert" not in text and text.count(escaped) >= 3  # host, revision, history
    # The history table: revision, actor, cause, the image with its tag.
    history = re.search(r'<tr data-revision="1">.*?</tr>', text, re.S)
    assert history and "update" in history.group(0) and "app:v1@sha256:abab" in history.group(0)
    # No external asset, no inline script; the browser is told so too.
    found = links(text)
    assert found.urls and all(u.startswith("/") and not u.startswith("//") or u == "data:,"
                              for u in found.urls), found.urls
    assert not found.inline_scripts
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        answer = serve.get(f"/ui/{asset}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", answer.text)

    # What the page's script polls: the same tables, as JSON.
    live = serve.get(f"/ui/projects/{project}")
    assert live.status_code == 200
    data = live.json()
    assert data["project"] == project and data["at"]
    assert 'data-machine="h2"' in data["html"] and escaped in data["html"]
    assert "<script>alert" not in json.dumps(data)


def test_page_failures_are_pages_that_say_what_went_wrong(stored, serve):
    missing = serve.get("/projects/no-such-project")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "no-such-project has no configuration" in missing.text
    bad_name = serve.get("/projects/%3Cb%3Ex")
    assert bad_name.status_code == 404 and "&lt;b&gt;x" in bad_name.text
    assert "<b>x" not in bad_name.text
    bad_limit = serve.get(f"/projects/{stored.project}?history=0")
    assert bad_limit.status_code == 400 and "history must be a number" in bad_limit.text
    assert serve.get("/ui/nothing.js").status_code == 404
    for bad in ("x", "%C2%B2", "101", "-1"):
        assert serve.get(f"/ui/projects/{stored.project}?history={bad}").status_code == 400
    # A chosen length is kept by the page's live updates.
    assert 'data-live="/ui/projects/' + stored.project + '?history=3"' in serve.get(
        f"/projects/{stored.project}?history=3").text


def test_page_without_etcd_says_so(tmp_path):
    dead = Serve([f"127.0.0.1:{free_port()}"], base=tmp_path)
    try:
        answer = dead.get("/")
        assert answer.status_code == 503 and "etcd unavailable" in answer.text
        assert answer.headers["content-type"].startswith("text/html")
    finally:
        dead.close()


def test_kept_demo_serves_the_page_and_stops_it(etcd, stored, tmp_path):
    """scripts/demo --keep: `gantryd serve` beside the fleet, its URL printed and kept in the
    demo's state; the demo's teardown (--stop) stops it."""
    import demo  # scripts/
    state = demo.DemoState(stored.project, str(tmp_path / "demo"))
    Path(state.dir).mkdir()
    state.etcd = etcd.endpoints[0]
    procs: dict = {}
    demo.start_serve(state, demo.Commands(state), procs)
    try:
        page = requests.get(state.page_url, timeout=30)
        assert page.status_code == 200 and 'data-machine="h2"' in page.text
        assert demo.DemoState.load(Path(state.dir)).serve_pid == procs["serve"].pid
    finally:
        demo.teardown(state)
    assert procs["serve"].poll() is not None


# -- in a real browser -------------------------------------------------------------------------

def artifacts_dir() -> Path:
    path = Path(os.environ.get("GANTRY_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser():
    """Headless Debian chromium through its own chromedriver (paths given: selenium-manager
    never runs, nothing downloads a browser). Missing in CI: a failure, not a skip."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        why = f"no browser to test the page with: {', '.join(missing)} missing " \
              "(scripts/bootstrap installs chromium and chromium-driver)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


# Records the hosts' versions at every change of the page, and leaves a mark that a
# reload would wipe out.
RECORDER = """
window.gantryNotReloaded = true;
window.gantrySeen = [];
function record() {
  var seen = {};
  document.querySelectorAll("tr[data-machine]").forEach(function (row) {
    seen[row.dataset.machine] = row.dataset.version;
  });
  window.gantrySeen.push(seen);
}
record();
new MutationObserver(record).observe(document.getElementById("content"),
                                     {childList: true, subtree: true});
"""
VERSIONS = """return Object.fromEntries(Array.from(document.querySelectorAll(
    "section[data-component=web] tr[data-machine]"),
    function (row) { return [row.dataset.machine, row.dataset.version]; }));"""


def test_browser_sees_every_host_turn_to_the_new_version(browser, fleet, serve, test_images):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def versions(driver) -> dict[str, str]:
        return driver.execute_script(VERSIONS)

    def live_text(driver) -> str:
        return driver.execute_script("return document.getElementById('live').textContent")

    def all_on_v2(driver) -> bool:
        now = versions(driver)
        labels = {v.split("@")[0] for v in now.values()}
        if labels == {"v1", "v2"} and not mid.exists():  # an extra artifact, when caught
            driver.save_screenshot(str(mid))
        return set(now) == set(HOSTS) and labels == {"v2"}

    fleet.deploy_v1(test_images)
    browser.get(f"{serve.url}/projects/{fleet.project}")
    shot = artifacts_dir() / "serve-page-rollout.png"
    mid = artifacts_dir() / "serve-page-mid-rollout.png"
    mid.unlink(missing_ok=True)
    try:
        before = versions(browser)
        assert set(before) == set(HOSTS) and all(v.startswith("v1@") for v in before.values())
        WebDriverWait(browser, 20, poll_frequency=0.2).until(
            lambda d: live_text(d).startswith("Live:"), "page.js to poll")
        browser.execute_script(RECORDER)

        fleet.setconfig(component(test_images, "v2", fleet.port))
        fleet.update()
        WebDriverWait(browser, 120, poll_frequency=0.2).until(
            all_on_v2, f"every host's row to show v2 ({fleet.logs()})")
        WebDriverWait(browser, 20, poll_frequency=0.2).until(
            lambda d: d.find_elements("css selector", 'tr[data-revision="2"]'),
            "the history table to show revision 2")
        assert browser.execute_script("return window.gantryNotReloaded") is True
        seen = browser.execute_script("return window.gantrySeen")
        for host in HOSTS:  # each host's row went from v1 to v2 on the open page
            trail = [s[host].split("@")[0] for s in seen if host in s]
            assert trail[0] == "v1" and trail[-1] == "v2", (host, trail)
        fleet.wait_done()
    finally:
        with contextlib.suppress(WebDriverException):  # keep the test's own error
            browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0

    # The server going away is shown on the page (the tables stay as last seen).
    serve.kill9()
    WebDriverWait(browser, 20, poll_frequency=0.2).until(
        lambda d: "interrupted" in live_text(d), "the page to say live updates stopped")
    assert all(v.startswith("v2@") for v in versions(browser).values())
