"""Property tests: parse_config only ever raises ConfigError, and valid configs round-trip."""
from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gantry.config import Config, ConfigError, parse_config
from gantry.config.model import Component

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=25)

KEYS = sorted({key for key in Component(name="x", repo="x").to_dict()}
              | {"external", "container", "kind", "port", "path", "timeout", "interval",
                 "value", "host", "readOnly", "maxParallel", "components", "//"})
# Objects built from the real key names get much deeper into the reader than random text keys.
keyed_objects = st.recursive(
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=6),
    lambda children: st.dictionaries(st.sampled_from(KEYS),
                                     children | st.lists(children, max_size=3) | scalars,
                                     max_size=6),
    max_leaves=30)


def parses_or_config_error(data: Any) -> Config | None:
    """parse_config(data), or None if it raised ConfigError; anything else fails the test."""
    try:
        cfg = parse_config(data, "fuzz")
    except ConfigError as err:
        assert err.errors, "ConfigError without issues"
        for issue in err.errors:
            assert issue.source == "fuzz" and issue.message
        str(err)
        return None
    assert parse_config(cfg.to_dict()) == cfg
    return cfg


@FUZZ
@given(json_values)
def test_random_json_only_raises_config_error(data: Any):
    parses_or_config_error(data)
    parses_or_config_error({"components": data})
    parses_or_config_error({"components": [data]})


@FUZZ
@given(st.lists(keyed_objects, min_size=1, max_size=3))
def test_random_objects_with_real_keys_only_raise_config_error(components: list[Any]):
    parses_or_config_error({"components": components})


# --- valid configs -----------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,12}", fullmatch=True)
ports = st.integers(1, 65535)
seconds = st.integers(1, 10_000) | st.floats(0.001, 1e6)
seconds_or_zero = st.just(0) | seconds
url_paths = st.from_regex(r"/[a-z0-9/_.?=-]{0,10}", fullmatch=True)
strings = st.text(min_size=1, max_size=10)


def optional(**fields: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with any subset of ``fields`` (to exercise defaults)."""
    return st.fixed_dictionaries({}, optional=fields)


checks = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["http", "tcp"]), "port": ports},
                          optional={"path": url_paths, "timeout": seconds, "interval": seconds}),
    st.fixed_dictionaries({"kind": st.just("docker")}, optional={"timeout": seconds}),
)
signals = st.one_of(
    st.fixed_dictionaries({"kind": st.just("http"), "port": ports},
                          optional={"path": url_paths, "timeout": seconds}),
    st.fixed_dictionaries({"kind": st.just("exec"),
                           "command": st.lists(st.text(max_size=6), min_size=1, max_size=3)},
                          optional={"timeout": seconds}),
)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    comp_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    externals = iter(draw(st.lists(ports, min_size=9, max_size=9, unique=True)))
    components = []
    for name in comp_names:
        comp = {"name": name, "repo": draw(st.sampled_from(
            ["app", "localhost:5000/gantry-test/app", "registry.example.com/a/b-c"]))}
        comp["ports"] = [
            {"external": next(externals), "container": draw(ports),
             **draw(optional(kind=st.sampled_from(["tcp", "http"])))}
            for _ in range(draw(st.integers(0, 3)))]
        env_names = draw(st.lists(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True),
                                  max_size=3, unique=True))
        comp["environmentVariables"] = [{"name": n, "value": draw(st.text(max_size=8))}
                                        for n in env_names]
        binds = draw(st.lists(st.from_regex(r"/[a-z]{1,6}", fullmatch=True), max_size=2,
                              unique=True))
        comp["bindings"] = [{"host": "/srv" + b, "container": b,
                             **draw(optional(readOnly=st.booleans()))} for b in binds]
        comp.update(draw(optional(
            tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True),
            command=st.lists(st.text(max_size=6), max_size=3),
            user=st.none() | strings,
            readyChecks=st.lists(checks, max_size=2),
            healthChecks=st.lists(checks, max_size=2),
            terminationChecks=st.lists(checks, max_size=2),
            terminationSignals=st.lists(signals, max_size=2),
            readyTimeout=seconds, healthFailures=st.integers(1, 10),
            volumesFrom=st.lists(strings, max_size=2), privileged=st.booleans(),
            drainTimeout=seconds_or_zero, drainIdleTimeout=st.none() | seconds,
            stopTimeout=seconds_or_zero,
            rollout=optional(maxParallel=st.integers(1, 50)),
        )))
        components.append(comp)
    return {"components": components}


@FUZZ
@given(valid_configs())
def test_valid_configs_round_trip(data: dict[str, Any]):
    cfg = parse_config(data)
    out = cfg.to_dict()
    assert parse_config(json.loads(json.dumps(out))) == cfg
    assert parse_config(out).to_dict() == out
    for comp in cfg.components:
        assert len(comp.spec_hash()) == 16


def _locations(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) inside a JSON tree."""
    found: list[tuple[Any, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((node, key))
            found += _locations(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.append((node, i))
            found += _locations(value)
    return found


def mutate(data: Any, draw: st.DataObject) -> Any:
    """A deep copy of ``data`` with 1-3 random mutations (drop, replace, insert, wrap in a
    list, stringify) anywhere in the tree (also used by tests/test_bad_input.py)."""
    mutated = copy.deepcopy(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        locations = _locations(mutated)
        if not locations:  # everything was dropped already
            break
        container, key = draw.draw(st.sampled_from(locations))
        action = draw.draw(st.sampled_from(["drop", "replace", "insert", "wrap", "stringify"]))
        if action == "drop":
            del container[key]
        elif action == "replace":
            container[key] = draw.draw(json_values)
        elif action == "insert" and isinstance(container, dict):
            container[draw.draw(st.sampled_from(KEYS) | st.text(max_size=8))] = \
                draw.draw(json_values)
        elif action == "insert":
            container.insert(key, draw.draw(json_values))
        elif action == "wrap":
            container[key] = [container[key]]
        else:
            container[key] = json.dumps(container[key])
    return mutated


@FUZZ
@given(valid_configs(), st.data())
def test_mutated_valid_configs_only_raise_config_error(data: dict[str, Any], draw: st.DataObject):
    parses_or_config_error(mutate(data, draw))
