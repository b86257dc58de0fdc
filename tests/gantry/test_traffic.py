"""`gantry pause|resume|maintenance` end to end (real dockerd, registry and proxy), and the
idempotent route convergence gantryd relies on (a fake proxy)."""
from __future__ import annotations

import json

from gantry_helpers import component_dict, holds_for, wait_for
from loadgen import Load, fetch

from gantry import traffic

WORKERS = 3


def _deploy(cli, tag: str = "v1") -> tuple[dict, tuple[str, int]]:
    web = component_dict(tag=tag)
    cli.write_config(web)
    done = cli.run("update", "web")
    assert done.returncode == 0, done.stderr
    return web, ("127.0.0.1", web["ports"][0]["external"])


def _route(proxy, project: str, web: dict) -> dict:
    return proxy.route(f"{project}.web.{web['ports'][0]['external']}")


def test_pause_update_resume_under_load(cli, proxy, project):
    """Requests held during a pause (a 3 s "migration" and an update to v2) are all answered,
    by v2: none fails, and none is answered by v1 once every worker's request is held."""
    web, where = _deploy(cli)
    route = lambda: _route(proxy, project, web)  # noqa: E731
    with Load([where], short_workers=WORKERS, timeout=60) as load:
        load.wait_for(lambda ld: ld.versions()["v1"] >= 5, 10)
        paused = cli.run("pause", "web", "--max-pause", "60")
        assert paused.returncode == 0, paused.stderr
        # Every worker is then blocked in a held request: nothing can be answered until resume.
        wait_for(lambda: route()["held"] == WORKERS, 10, "every worker's request to be held")
        answered = load.sent
        v1_answers = load.versions()["v1"]
        listed = cli.run("list").stdout
        assert f"running (paused, {WORKERS} held)" in listed, listed

        holds_for(lambda: route()["held"] == WORKERS, 3, "the pause (the migration)")
        cli.write_config({**web, "tag": "v2"})
        updated = cli.run("update", "web")
        assert updated.returncode == 0, updated.stdout + updated.stderr
        # Held connections belong to no backend: v1's drain did not wait for them.
        assert "drain timeout" not in updated.stdout, updated.stdout
        after = route()
        assert after["paused"] is not None and after["held"] == WORKERS  # the switch kept it
        assert load.sent == answered

        resumed = cli.run("resume", "web")
        assert resumed.returncode == 0, resumed.stderr
        load.wait_for(lambda ld: ld.versions()["v2"] >= WORKERS + 5, 15)
    assert load.failed == 0, load.errors()
    assert load.versions()["v1"] == v1_answers  # the held requests were answered by v2
    assert route()["paused"] is None and route()["held"] == 0
    (only,) = json.loads(cli.run("list", "web", "--json").stdout)["web"]
    assert only["display"] == "running" and only["traffic"] == ""


def test_maintenance_answers_503_with_the_message(cli, proxy, project):
    web, where = _deploy(cli)
    on = cli.run("maintenance", "web", "on", "--message", "Back at noon")
    assert on.returncode == 0, on.stderr
    status, body = fetch(where, timeout=10)
    assert status == 503 and "Back at noon" in body
    assert "running (maintenance)" in cli.run("list").stdout

    off = cli.run("maintenance", "web", "off")
    assert off.returncode == 0, off.stderr
    assert fetch(where, timeout=10) == (200, "v1")
    assert _route(proxy, project, web)["maintenance"] is None


def test_pause_without_routes_and_bad_usage(cli):
    cli.write_config(component_dict(tag="v1"))
    for argv in (("pause", "web"), ("resume", "web"), ("maintenance", "web", "on")):
        out = cli.run(*argv)
        assert out.returncode == 1, argv
        assert "web has no proxy route" in out.stderr and "gantry update web" in out.stderr
    assert cli.run("maintenance", "web").returncode == 2  # neither on nor off
    assert cli.run("pause", "web", "--max-pause", "0").returncode == 2
    unknown = cli.run("pause", "wbe")
    assert unknown.returncode == 2 and 'did you mean "web"' in unknown.stderr


class _FakeProxy:
    """Records pause/resume/maintenance calls; answers like the proxy (the route)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def pause(self, name: str, max_pause: float) -> dict:
        self.calls.append(("pause", name, max_pause))
        return {"name": name}

    def resume(self, name: str) -> dict:
        self.calls.append(("resume", name))
        return {"name": name}

    def maintenance(self, name: str, enabled: bool, message: str | None) -> dict:
        self.calls.append(("maintenance", name, enabled, message))
        return {"name": name}


def _r(name: str, paused: float | None = None, message: str | None = None, held: int = 0,
       maintenance: bool = False) -> dict:
    return {"name": name, "held": held,
            "paused": {"maxPause": paused, "since": 1.0} if paused else None,
            "maintenance": {"message": message} if maintenance else None}


def test_converge_changes_only_what_differs():
    proxy = _FakeProxy()
    routes = [_r("p.web.80", paused=30.0), _r("p.web.81"),
              _r("p.web.82", paused=10.0, maintenance=True, message="proxy default text")]
    changed = traffic.converge(proxy, routes, traffic.Gate(paused=30.0))
    assert changed == ["p.web.81", "p.web.82"]
    assert proxy.calls == [("pause", "p.web.81", 30.0), ("pause", "p.web.82", 30.0),
                           ("maintenance", "p.web.82", False, None)]
    proxy.calls.clear()
    # Maintenance without a message matches whatever page the proxy shows by default.
    assert traffic.converge(proxy, [routes[2]], traffic.Gate(10.0, True)) == []
    assert traffic.converge(proxy, [routes[2]], traffic.Gate(None, True, "X")) == ["p.web.82"]
    assert proxy.calls == [("resume", "p.web.82"), ("maintenance", "p.web.82", True, "X")]


def test_describe_and_states():
    routes = [_r("p.web.80", paused=30.0, held=2), _r("p.web.81", paused=30.0, held=1)]
    assert traffic.describe(routes) == "paused, 3 held"
    assert traffic.states(routes) == ("paused",)
    both = [*routes, _r("p.web.82", maintenance=True)]
    assert traffic.describe(both) == "paused, 3 held, maintenance"
    assert traffic.states([_r("p.web.80")]) == () and traffic.describe([]) == ""
