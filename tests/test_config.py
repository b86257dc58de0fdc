"""Tests of the config model: parsing, defaults, strict validation, files, hashing, docs."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gantry.config import (
    Binding, Check, Component, Config, ConfigError, ConfigIssue, EnvVar, Port, Rollout,
    TerminationSignal, load_config, parse_config,
)
from gantry.config.reference import render_reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".gantry.example"
YAML_TWIN = ROOT / "tests" / "data" / "example.gantry.yml"
REPO = "localhost:5000/gantry-test/app"


def comp(**fields: Any) -> dict[str, Any]:
    """A minimal valid component dict, with ``fields`` added or replaced."""
    return {"name": "web", "repo": REPO, **fields}


def config(*components: dict[str, Any]) -> dict[str, Any]:
    return {"components": list(components) or [comp()]}


def issues(data: Any, source: str = ".gantry") -> list[str]:
    """The issue lines parse_config reports for ``data`` (fails if it parses)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    return [str(issue) for issue in info.value.errors]


def only_issue(data: Any) -> str:
    found = issues(data)
    assert len(found) == 1, found
    return found[0]


FULL = comp(
    name="api-1.x_y", tag="v1.2", command=["serve", "--port", "8080", ""], user="1000:1000",
    ports=[{"external": 80, "container": 8080, "kind": "http"},
           {"external": 9000, "container": 9000}],
    readyChecks=[{"kind": "http", "port": 8080, "path": "/ready?x=1", "timeout": 0.5,
                  "interval": 2},
                 {"kind": "docker"}],
    healthChecks=[{"kind": "tcp", "port": 9000}],
    readyTimeout=12.5, healthFailures=5,
    environmentVariables=[{"name": "A", "value": "1"}, {"name": "B", "value": ""}],
    bindings=[{"host": "/srv/data", "container": "/data", "readOnly": True},
              {"host": "/srv/logs", "container": "/logs"}],
    volumesFrom=["datastore"], privileged=True,
    terminationSignals=[{"kind": "http", "port": 8080, "path": "/quit"},
                        {"kind": "exec", "command": ["kill", "1"], "timeout": 3}],
    terminationChecks=[{"kind": "tcp", "port": 9000, "timeout": 1, "interval": 1}],
    drainTimeout=45, drainIdleTimeout=1.5, stopTimeout=0, rollout={"maxParallel": 3},
)


# --- parsing values and defaults ---------------------------------------------------------------

def test_every_field_parsed():
    c = parse_config(config(FULL)).components[0]
    assert c == Component(
        name="api-1.x_y", repo=REPO, tag="v1.2", command=("serve", "--port", "8080", ""),
        user="1000:1000",
        ports=(Port(external=80, container=8080, kind="http"),
               Port(external=9000, container=9000, kind="tcp")),
        ready_checks=(Check(kind="http", port=8080, path="/ready?x=1", timeout=0.5, interval=2.0),
                      Check(kind="docker", port=None, path="/", timeout=2.0, interval=1.0)),
        health_checks=(Check(kind="tcp", port=9000),),
        ready_timeout=12.5, health_failures=5,
        environment=(EnvVar(name="A", value="1"), EnvVar(name="B", value="")),
        bindings=(Binding(host="/srv/data", container="/data", read_only=True),
                  Binding(host="/srv/logs", container="/logs", read_only=False)),
        volumes_from=("datastore",), privileged=True,
        termination_signals=(TerminationSignal(kind="http", port=8080, path="/quit", timeout=5.0),
                             TerminationSignal(kind="exec", command=("kill", "1"), timeout=3.0)),
        termination_checks=(Check(kind="tcp", port=9000, timeout=1.0, interval=1.0),),
        drain_timeout=45.0, drain_idle_timeout=1.5, stop_timeout=0.0,
        rollout=Rollout(max_parallel=3),
    )
    assert isinstance(c.drain_timeout, float) and isinstance(c.ready_checks[0].interval, float)
    assert c.image == f"{REPO}:v1.2"
    assert c.http_ports == (Port(external=80, container=8080, kind="http"),)
    assert c.env_dict() == {"A": "1", "B": ""}


def test_defaults_match_the_internals_table():
    c = parse_config(config(comp())).components[0]
    assert (c.tag, c.command, c.user, c.ports) == ("latest", (), None, ())
    assert (c.ready_checks, c.health_checks, c.termination_checks) == ((), (), ())
    assert (c.ready_timeout, c.health_failures) == (60.0, 3)
    assert (c.environment, c.bindings, c.volumes_from, c.privileged) == ((), (), (), False)
    assert c.termination_signals == ()
    assert (c.drain_timeout, c.drain_idle_timeout, c.stop_timeout) == (30.0, None, 10.0)
    assert c.rollout == Rollout(max_parallel=1)


def test_nested_defaults():
    c = parse_config(config(comp(
        ports=[{"external": 1, "container": 65535}],
        readyChecks=[{"kind": "http", "port": 80}],
        bindings=[{"host": "/a", "container": "/b"}],
        terminationSignals=[{"kind": "http", "port": 80}], rollout={}))).components[0]
    assert c.ports[0].kind == "tcp"
    assert c.ready_checks[0] == Check(kind="http", port=80, path="/", timeout=2.0, interval=1.0)
    assert c.bindings[0].read_only is False
    assert c.termination_signals[0] == TerminationSignal(
        kind="http", port=80, path="/", command=(), timeout=5.0)
    assert c.rollout.max_parallel == 1


def test_model_is_immutable_and_uses_tuples():
    cfg = parse_config(config(FULL))
    c = cfg.components[0]
    assert isinstance(cfg.components, tuple)
    for value in (c.command, c.ports, c.ready_checks, c.environment, c.bindings,
                  c.volumes_from, c.termination_signals, c.termination_signals[1].command):
        assert isinstance(value, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tag = "v2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.ports[0].external = 1  # type: ignore[misc]
    hash(cfg)  # frozen all the way down, so usable as a dict key / in sets


def test_docker_check_needs_no_port_and_any_port_is_allowed():
    c = parse_config(config(comp(ports=[{"external": 80, "container": 8080}],
                                 readyChecks=[{"kind": "docker"},
                                              {"kind": "tcp", "port": 9999}]))).components[0]
    assert c.ready_checks[1].port == 9999  # not a routed port: still fine


def test_zero_drain_and_stop_timeouts_are_allowed():
    c = parse_config(config(comp(drainTimeout=0, stopTimeout=0.0))).components[0]
    assert (c.drain_timeout, c.stop_timeout) == (0.0, 0.0)


def test_comment_keys_are_ignored_everywhere():
    data = {"//": "top", "components": [comp(**{
        "//": ["any", "value"], "//tag": "v9", "//drainTimeout": 5,
        "ports": [{"//": "note", "external": 80, "container": 80}],
        "rollout": {"//x": None, "maxParallel": 2}})]}
    c = parse_config(data).components[0]
    assert (c.tag, c.drain_timeout, c.rollout.max_parallel) == ("latest", 30.0, 2)
    assert "//" not in json.dumps(parse_config(data).to_dict())


# --- errors -----------------------------------------------------------------------------------

P = "components[0]"
ERROR_CASES = [
    # (component fields, exact expected issue after ".gantry: ")
    ({"ports": [{"external": "80a", "container": 80}]},
     f'{P}.ports[0].external: expected an integer port 1-65535, got "80a"'),
    ({"ports": [{"external": 0, "container": 80}]},
     f"{P}.ports[0].external: expected an integer port 1-65535, got 0"),
    ({"ports": [{"external": 80, "container": 65536}]},
     f"{P}.ports[0].container: expected an integer port 1-65535, got 65536"),
    ({"ports": [{"external": 80.0, "container": 80}]},
     f"{P}.ports[0].external: expected an integer port 1-65535, got 80.0"),
    ({"ports": [{"external": True, "container": 80}]},
     f"{P}.ports[0].external: expected an integer port 1-65535, got true"),
    ({"ports": [{"external": 80}]},
     f"{P}.ports[0].container: missing (expected an integer port 1-65535)"),
    ({"ports": [{"external": 80, "container": 80, "kind": "udp"}]},
     f'{P}.ports[0].kind: expected one of "tcp", "http", got "udp"'),
    ({"ports": [{"external": 80, "container": 80, "kind": "HTTP"}]},
     f'{P}.ports[0].kind: expected one of "tcp", "http", got "HTTP"; did you mean "http"?'),
    ({"ports": {"external": 80}},
     f'{P}.ports: expected a list of ports, got {{"external": 80}}'),
    ({"ports": ["80:80"]}, f'{P}.ports[0]: expected an object (Port), got "80:80"'),
    ({"privileged": "false"}, f'{P}.privileged: expected true or false, got "false"'),
    ({"privileged": 0}, f"{P}.privileged: expected true or false, got 0"),
    ({"bindings": [{"host": "/a", "container": "/b", "readOnly": "true"}]},
     f'{P}.bindings[0].readOnly: expected true or false, got "true"'),
    ({"bindings": [{"host": "data", "container": "/b"}]},
     f'{P}.bindings[0].host: expected an absolute path (starting with "/", without ":"), '
     f'got "data"'),
    ({"bindings": [{"host": "/a", "container": "/b:ro"}]},
     f'{P}.bindings[0].container: expected an absolute path (starting with "/", without ":"), '
     f'got "/b:ro"'),
    ({"bindings": [{"host": "/a", "container": "/b"}, {"host": "/c", "container": "/b"}]},
     f'{P}.bindings[1].container: duplicate container path "/b" '
     f"(already used by {P}.bindings[0])"),
    ({"name": "Web"},
     f'{P}.name: expected a Docker-safe name matching [a-z0-9][a-z0-9_.-]*, got "Web"'),
    ({"name": "-web"},
     f'{P}.name: expected a Docker-safe name matching [a-z0-9][a-z0-9_.-]*, got "-web"'),
    ({"name": ""},
     f'{P}.name: expected a Docker-safe name matching [a-z0-9][a-z0-9_.-]*, got ""'),
    ({"repo": "app:v1"},
     f'{P}.repo: expected a Docker repository without a tag, such as '
     f'"localhost:5000/team/app" or null, got "app:v1"'),
    ({"repo": None},  # null is no repo: then a build is needed
     f'{P}.repo: missing (expected a Docker repository without a tag, such as '
     f'"localhost:5000/team/app", or a "build")'),
    ({"tag": "v 1"},
     f'{P}.tag: expected a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters), '
     f'got "v 1"'),
    ({"tag": 1.1},
     f"{P}.tag: expected a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters), "
     f"got 1.1"),
    ({"command": "npm start"}, f'{P}.command: expected a list of strings, got "npm start"'),
    ({"command": ["run", 1]}, f"{P}.command[1]: expected a string, got 1"),
    ({"user": ""}, f'{P}.user: expected a non-empty string or null, got ""'),
    ({"user": 1000}, f"{P}.user: expected a non-empty string or null, got 1000"),
    ({"environmentVariables": [{"name": "PORT", "value": 8080}]},
     f"{P}.environmentVariables[0].value: expected a string (quote numbers and booleans), "
     f"got 8080"),
    ({"environmentVariables": [{"name": "DEBUG", "value": False}]},
     f"{P}.environmentVariables[0].value: expected a string (quote numbers and booleans), "
     f"got false"),
    ({"environmentVariables": [{"name": "A=B", "value": "x"}]},
     f'{P}.environmentVariables[0].name: expected an environment variable name '
     f'(non-empty, without "="), got "A=B"'),
    ({"environmentVariables": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                               {"name": "A", "value": "3"}]},
     f'{P}.environmentVariables[2].name: duplicate environment variable "A" '
     f"(already used by {P}.environmentVariables[0])"),
    ({"environmentVariables": {"A": "1"}},
     f'{P}.environmentVariables: expected a list of variables, got {{"A": "1"}}'),
    ({"readyChecks": [{"kind": "http"}]},
     f"{P}.readyChecks[0].port: required for http checks (expected an integer port 1-65535)"),
    ({"healthChecks": [{"kind": "tcp", "path": "/x"}]},
     f"{P}.healthChecks[0].port: required for tcp checks (expected an integer port 1-65535)"),
    ({"terminationChecks": [{"port": 80}]},
     f'{P}.terminationChecks[0].kind: missing (expected one of "http", "tcp", "docker")'),
    ({"readyChecks": [{"kind": "http", "port": 80, "path": "health"}]},
     f'{P}.readyChecks[0].path: expected a URL path starting with "/", got "health"'),
    ({"readyChecks": [{"kind": "tcp", "port": 80, "timeout": 0}]},
     f"{P}.readyChecks[0].timeout: expected a number of seconds > 0, got 0"),
    ({"readyChecks": [{"kind": "tcp", "port": 80, "interval": -1}]},
     f"{P}.readyChecks[0].interval: expected a number of seconds > 0, got -1"),
    ({"readyChecks": [{"kind": "tcp", "port": 80, "timeout": "2"}]},
     f'{P}.readyChecks[0].timeout: expected a number of seconds > 0, got "2"'),
    ({"readyChecks": [{"kind": "tcp", "port": 80, "timeout": True}]},
     f"{P}.readyChecks[0].timeout: expected a number of seconds > 0, got true"),
    ({"readyTimeout": 0}, f"{P}.readyTimeout: expected a number of seconds > 0, got 0"),
    ({"readyTimeout": float("inf")},
     f"{P}.readyTimeout: expected a number of seconds > 0, got Infinity"),
    ({"readyTimeout": float("nan")},
     f"{P}.readyTimeout: expected a number of seconds > 0, got NaN"),
    ({"healthFailures": 0}, f"{P}.healthFailures: expected an integer >= 1, got 0"),
    ({"healthFailures": 1.5}, f"{P}.healthFailures: expected an integer >= 1, got 1.5"),
    ({"drainTimeout": -1}, f"{P}.drainTimeout: expected a number of seconds >= 0, got -1"),
    ({"drainTimeout": False}, f"{P}.drainTimeout: expected a number of seconds >= 0, got false"),
    ({"drainIdleTimeout": 0},
     f"{P}.drainIdleTimeout: expected a number of seconds > 0 or null, got 0"),
    ({"stopTimeout": "10"}, f'{P}.stopTimeout: expected a number of seconds >= 0, got "10"'),
    ({"volumesFrom": "db"}, f'{P}.volumesFrom: expected a list of container names, got "db"'),
    ({"volumesFrom": [""]}, f'{P}.volumesFrom[0]: expected a non-empty string, got ""'),
    ({"terminationSignals": [{"kind": "exec"}]},
     f"{P}.terminationSignals[0].command: required for exec termination signals "
     f"(expected a non-empty list of strings)"),
    ({"terminationSignals": [{"kind": "exec", "command": []}]},
     f"{P}.terminationSignals[0].command: required for exec termination signals "
     f"(expected a non-empty list of strings)"),
    ({"terminationSignals": [{"kind": "http", "path": "/stop"}]},
     f"{P}.terminationSignals[0].port: required for http termination signals "
     f"(expected an integer port 1-65535)"),
    ({"terminationSignals": [{"kind": "kill"}]},
     f'{P}.terminationSignals[0].kind: expected one of "http", "exec", got "kill"'),
    ({"rollout": {"maxParallel": 0}},
     f"{P}.rollout.maxParallel: expected an integer >= 1, got 0"),
    ({"rollout": 2}, f"{P}.rollout: expected an object (Rollout), got 2"),
    ({"tga": "v1"}, f'{P}.tga: unknown key "tga"; did you mean "tag"?'),
    ({"drain_timeout": 5}, f'{P}.drain_timeout: unknown key "drain_timeout"; '
                           f'did you mean "drainTimeout"?'),
    ({"environment": []}, f'{P}.environment: unknown key "environment"; '
                          f'did you mean "environmentVariables"?'),
    ({"rollout": {"maxparallel": 2}},
     f'{P}.rollout.maxparallel: unknown key "maxparallel"; did you mean "maxParallel"?'),
    ({"rollout": {"onFailure": "revert"}},
     f'{P}.rollout.onFailure: expected one of "halt", "rollback", got "revert"'),
    ({"rollout": {"onFailure": "Rollback"}},
     f'{P}.rollout.onFailure: expected one of "halt", "rollback", got "Rollback"; '
     f'did you mean "rollback"?'),
    ({"retainImages": 0}, f"{P}.retainImages: expected an integer >= 1, got 0"),
    ({"rollout": {"minHealthy": -1}},
     f"{P}.rollout.minHealthy: expected a number of seconds >= 0, got -1"),
    ({"rollout": {"maxParallelPulls": 0}},
     f"{P}.rollout.maxParallelPulls: expected an integer >= 1 or null, got 0"),
    ({"rollout": {"minHealthyTime": 10}},
     f'{P}.rollout.minHealthyTime: unknown key "minHealthyTime"; did you mean "minHealthy"?'),
]


@pytest.mark.parametrize("fields, expected", ERROR_CASES,
                         ids=[e.split(":")[0] + "-" + str(i) for i, (_, e) in
                              enumerate(ERROR_CASES)])
def test_error(fields: dict[str, Any], expected: str):
    assert only_issue(config(comp(**fields))) == f".gantry: {expected}"


def test_missing_required_keys():
    assert issues(config({"tag": "v1"})) == [
        ".gantry: components[0].name: missing (expected a Docker-safe name matching "
        "[a-z0-9][a-z0-9_.-]*)",
        '.gantry: components[0].repo: missing (expected a Docker repository without a tag, '
        'such as "localhost:5000/team/app", or a "build")',
    ]


def test_unknown_key_without_suggestion_lists_the_keys():
    message = only_issue(config(comp(zzzzzz=1)))
    assert message.startswith('.gantry: components[0].zzzzzz: unknown key "zzzzzz"; '
                              "expected one of: name, repo, tag, build, autoUpdate, command,")
    assert message.endswith("stopTimeout, retainImages, rollout")


@pytest.mark.parametrize("data, expected", [
    ([], 'expected an object with a "components" list, got []'),
    (None, 'expected an object with a "components" list, got null'),
    ("x", 'expected an object with a "components" list, got "x"'),
    ({}, "components: missing (expected a list of at least 1 components)"),
    ({"components": []}, "components: expected a list of at least 1 components, got []"),
    ({"components": {"web": {}}},
     'components: expected a list of at least 1 components, got {"web": {}}'),
    ({"components": [comp(), "db"]}, 'components[1]: expected an object (Component), got "db"'),
    ({"components": [comp()], "compnents": []},
     'compnents: unknown key "compnents"; did you mean "components"?'),
])
def test_top_level_errors(data: Any, expected: str):
    assert only_issue(data) == f".gantry: {expected}"


def test_duplicate_component_names_and_external_ports():
    data = config(comp(ports=[{"external": 80, "container": 80}]),
                  comp(name="api", ports=[{"external": 81, "container": 80}]),
                  comp(ports=[{"external": 9000, "container": 1},
                              {"external": 80, "container": 2}]),
                  comp(name="db", ports=[{"external": 81, "container": 80}]))
    assert issues(data) == [
        '.gantry: components[2].name: duplicate component name "web" '
        "(already used by components[0])",
        ".gantry: components[2].ports[1].external: duplicate external port 80 "
        "(already used by components[0].ports[0])",
        ".gantry: components[3].ports[0].external: duplicate external port 81 "
        "(already used by components[1].ports[0])",
    ]


def test_same_external_port_twice_in_one_component():
    assert only_issue(config(comp(ports=[{"external": 80, "container": 80},
                                         {"external": 80, "container": 81}]))) == (
        ".gantry: components[0].ports[1].external: duplicate external port 80 "
        "(already used by components[0].ports[0])")


def test_all_errors_are_reported_at_once():
    data = config(
        comp(tga="v1", privileged="false",
             ports=[{"external": "80a", "container": 80}, {"external": 81, "container": 0}],
             readyChecks=[{"kind": "http"}]),
        comp(name="Bad Name", repo=7, drainTimeout=True),
        comp(),
        {"name": "db"},
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, ".gantry")
    paths = [issue.path for issue in info.value.errors]
    assert sorted(paths) == sorted([
        "components[0].tga", "components[0].privileged", "components[0].ports[0].external",
        "components[0].ports[1].container", "components[0].readyChecks[0].port",
        "components[1].name", "components[1].repo", "components[1].drainTimeout",
        "components[2].name", "components[3].repo",
    ])
    assert all(issue.source == ".gantry" for issue in info.value.errors)
    assert str(info.value).splitlines() == [str(issue) for issue in info.value.errors]


def test_issue_and_error_types():
    issue = ConfigIssue("f.json", "components[0].tag", "bad")
    assert str(issue) == "f.json: components[0].tag: bad"
    assert str(ConfigIssue("f.json", "", "file not found")) == "f.json: file not found"
    with pytest.raises(dataclasses.FrozenInstanceError):
        issue.path = "x"  # type: ignore[misc]
    err = ConfigError([issue, issue])
    assert isinstance(err, Exception) and err.errors == [issue, issue]
    assert str(err) == "f.json: components[0].tag: bad\nf.json: components[0].tag: bad"


def test_default_source_name():
    with pytest.raises(ConfigError) as info:
        parse_config({"components": []})
    assert str(info.value).startswith("<config>: components:")


# --- files --------------------------------------------------------------------------------------

def test_load_json_and_yaml_files(tmp_path: Path):
    data = config(FULL)
    (tmp_path / ".gantry").write_text(json.dumps(data))
    import yaml
    (tmp_path / "g.yml").write_text(yaml.safe_dump(data))
    (tmp_path / "g.YAML").write_text(yaml.safe_dump(data))
    expected = parse_config(data)
    for name in (".gantry", "g.yml", "g.YAML"):
        cfg = load_config(tmp_path / name)
        assert isinstance(cfg, Config) and cfg == expected
        assert cfg.source == str(tmp_path / name)


def test_error_names_the_file(tmp_path: Path):
    path = tmp_path / "proj.gantry"
    path.write_text(json.dumps(config(comp(privileged="false"))))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f'{path}: components[0].privileged: expected true or false, ' \
                              f'got "false"'


def test_missing_and_unreadable_files(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: file not found"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read file: ")
    (tmp_path / "bin").write_bytes(b'{"components": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin")


def test_utf8_bom_is_tolerated(tmp_path: Path):
    (tmp_path / "g").write_bytes(b"\xef\xbb\xbf" + json.dumps(config()).encode())
    assert load_config(tmp_path / "g").names == ("web",)


def test_bad_json_syntax_reports_line_and_column(tmp_path: Path):
    path = tmp_path / ".gantry"
    path.write_text('{\n  "components": [\n    {"name": "web",}\n  ]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: line 3, column 20: invalid JSON: "
                               "Expecting property name enclosed in double quotes")
    path.write_text("")
    with pytest.raises(ConfigError, match="line 1, column 1: invalid JSON"):
        load_config(path)


def test_bad_yaml_syntax_reports_line_and_column(tmp_path: Path):
    path = tmp_path / "g.yaml"
    path.write_text("components:\n  - name: web\n    repo: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [issue] = info.value.errors
    assert issue.source == str(path) and issue.path == ""
    assert issue.message.startswith("line 4, column 1: invalid YAML:")


@pytest.mark.parametrize("name, text", [
    ("g.json", '{"components": [{"name": "web", "repo": "a", "healthFailures": %s}]}'),
    ("g.yml", "components:\n- name: web\n  repo: a\n  healthFailures: %s\n"),
])
def test_absurdly_long_numbers(tmp_path: Path, name: str, text: str):
    # Python refuses to convert integers of more than 4300 digits: still a ConfigError.
    (tmp_path / name).write_text(text % ("9" * 5000))
    with pytest.raises(ConfigError, match="invalid (JSON|YAML)"):
        load_config(tmp_path / name)
    with pytest.raises(ConfigError, match="healthFailures: expected an integer >= 1, got <int"):
        parse_config(config(comp(healthFailures=-10**5000)))


def test_empty_yaml_file(tmp_path: Path):
    (tmp_path / "g.yml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match='expected an object with a "components" list, got null'):
        load_config(tmp_path / "g.yml")


def test_duplicate_keys_are_errors(tmp_path: Path):
    path = tmp_path / ".gantry"
    path.write_text('{"components": [{"name": "web", "repo": "a", "tag": "v1", "tag": "v2"}]}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: components[0].tag: key appears more than once"
    path = tmp_path / "g.yml"
    path.write_text("components:\n  - name: web\n    repo: a\n    name: api\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: line 4, column 5: invalid YAML: while constructing a "
                               "mapping found duplicate key 'name'")


def test_yaml_merge_keys_still_work(tmp_path: Path):
    path = tmp_path / "g.yml"
    path.write_text("components:\n  - &web {name: web, repo: a, tag: v1}\n"
                    "  - {<<: *web, name: api}\n")
    assert [c.tag for c in load_config(path).components] == ["v1", "v1"]


def test_yaml_typing_surprises_are_caught(tmp_path: Path):
    # Unquoted YAML scalars that are not strings must not slip through as strings.
    path = tmp_path / "g.yaml"
    path.write_text("components:\n  - name: web\n    repo: a\n    tag: 1.10\n"
                    "    environmentVariables: [{name: DEBUG, value: yes}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [f"{e.path}: {e.message}" for e in info.value.errors] == [
        "components[0].tag: expected a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 "
        "characters), got 1.1",
        "components[0].environmentVariables[0].value: expected a string (quote numbers and "
        "booleans), got true",
    ]


# --- the example ------------------------------------------------------------------------------

def test_example_loads_and_matches_yaml_twin():
    example = load_config(EXAMPLE)
    assert example.names == ("web", "worker")
    assert load_config(YAML_TWIN) == example
    web, worker = example.components
    assert web.ports == (Port(external=8080, container=8080, kind="http"),)
    assert web.ready_checks[0].kind == "http" and web.ready_checks[0].path == "/"
    assert web.environment and web.termination_signals and web.drain_idle_timeout == 2.0
    assert worker.ports[0].kind == "tcp" and worker.ports[0].external != 8080
    assert {c.repo for c in example.components} == {"localhost:5000/gantry-test/app"}
    assert {c.tag for c in example.components} == {"v1"}


def test_example_is_annotated_with_comment_keys():
    raw = json.loads(EXAMPLE.read_text())
    assert "//" in raw and all("//" in c for c in raw["components"])


# --- API ----------------------------------------------------------------------------------------

def test_component_lookup():
    cfg = load_config(EXAMPLE)
    assert cfg.component("worker").name == "worker"
    with pytest.raises(ConfigError) as info:
        cfg.component("wbe")
    assert str(info.value) == f'{EXAMPLE}: components: no component named "wbe"; ' \
                              'did you mean "web"?'
    with pytest.raises(ConfigError) as info:
        cfg.component("zzz")
    assert str(info.value).endswith('no component named "zzz"; components: web, worker')


@pytest.mark.parametrize("data", [config(FULL), config(comp()), json.loads(EXAMPLE.read_text())])
def test_to_dict_round_trips(data: dict[str, Any]):
    cfg = parse_config(data)
    out = cfg.to_dict()
    assert json.loads(json.dumps(out)) == out  # JSON-able as is
    assert parse_config(out) == cfg
    assert parse_config(json.loads(json.dumps(out))).to_dict() == out
    assert out["components"][0] == cfg.components[0].to_dict()


def test_to_dict_is_canonical_with_defaults():
    out = parse_config(config(comp())).to_dict()["components"][0]
    assert out == {
        "name": "web", "repo": REPO, "tag": "latest", "build": None, "autoUpdate": False,
        "command": [],
        "user": None, "ports": [],
        "readyChecks": [], "healthChecks": [], "readyTimeout": 60.0, "healthFailures": 3,
        "environmentVariables": [], "bindings": [], "volumesFrom": [], "privileged": False,
        "terminationSignals": [], "terminationChecks": [], "drainTimeout": 30.0,
        "drainIdleTimeout": None, "stopTimeout": 10.0, "retainImages": 3,
        "rollout": {"maxParallel": 1, "onFailure": "halt", "keepRevisions": 100,
                    "minHealthy": 0.0, "maxParallelPulls": None},
    }


def test_equality_ignores_source():
    assert parse_config(config(), "a") == parse_config(config(), "b")


def _hash(**fields: Any) -> str:
    return parse_config(config(comp(**fields))).components[0].spec_hash()


def test_spec_hash_is_stable():
    base = _hash()
    assert len(base) == 16 and int(base, 16) >= 0
    # Pinned: a change here relabels (and so redeploys) every running container.
    assert base == "f89b78957ea1d7aa"
    assert _hash() == base


@pytest.mark.parametrize("fields", [
    {"repo": "localhost:5000/other"}, {"command": ["sh"]}, {"user": "1"},
    {"ports": [{"external": 80, "container": 80}]},
    {"environmentVariables": [{"name": "A", "value": "1"}]},
    {"bindings": [{"host": "/a", "container": "/b"}]}, {"volumesFrom": ["x"]},
    {"privileged": True},
])
def test_spec_hash_changes_with_what_a_container_is_made_of(fields: dict[str, Any]):
    assert _hash(**fields) != _hash()


@pytest.mark.parametrize("fields", [
    {"tag": "v2"}, {"build": {"context": "app"}}, {"autoUpdate": True}, {"drainTimeout": 1},
    {"stopTimeout": 1},
    {"readyTimeout": 1}, {"drainIdleTimeout": 1}, {"healthFailures": 9},
    {"rollout": {"maxParallel": 4}},
    {"readyChecks": [{"kind": "docker"}]}, {"healthChecks": [{"kind": "docker"}]},
    {"terminationSignals": [{"kind": "exec", "command": ["x"]}]},
    {"terminationChecks": [{"kind": "docker"}]},
])
def test_spec_hash_ignores_rollout_settings(fields: dict[str, Any]):
    assert _hash(**fields) == _hash()


def test_spec_hash_sensitive_to_values_not_order():
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert _hash(environmentVariables=env) == _hash(environmentVariables=env[::-1])
    changed = copy.deepcopy(env)
    changed[0]["value"] = "9"
    assert _hash(environmentVariables=changed) != _hash(environmentVariables=env)
    assert _hash(command=["a", "b"]) != _hash(command=["b", "a"])
    assert (_hash(ports=[{"external": 80, "container": 80}])
            != _hash(ports=[{"external": 80, "container": 81}]))


# --- generated reference ------------------------------------------------------------------------

def test_config_doc_is_up_to_date():
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == render_reference(), "run scripts/gen_config_doc.py"


def test_gen_config_doc_check_mode(tmp_path: Path):
    script = ROOT / "scripts" / "gen_config_doc.py"
    out = tmp_path / "config.md"
    run = lambda *a: subprocess.run([sys.executable, str(script), "--output", str(out), *a],  # noqa
                                    capture_output=True, text=True)
    assert run("--check").returncode == 1
    assert run().returncode == 0 and out.read_text() == render_reference()
    assert run("--check").returncode == 0


def test_doc_lists_every_key():
    doc = render_reference()
    for key in FULL:
        assert f"| `{key}` |" in doc
