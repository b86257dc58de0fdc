"""Reading `.gantry` files: JSON, or YAML when the name ends in ``.yml``/``.yaml``."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml

from .errors import ConfigError
from .model import Config, parse_config

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yml", ".yaml")


class _JsonObject(dict):
    """A JSON object that remembers keys given more than once (reported by the reader)."""

    duplicate_keys: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicate_keys = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<` merges may legitimately be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it with its position
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as e:
        raise ConfigError.single(source, "", f"line {e.lineno}, column {e.colno}: "
                                             f"invalid JSON: {e.msg}") from None
    except ValueError as e:  # e.g. integers longer than Python's 4300-digit limit
        raise ConfigError.single(source, "", f"invalid JSON: {e}") from None
    except RecursionError:
        raise ConfigError.single(source, "", "invalid JSON: nested too deeply") from None


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError.single(source, "", f"{where}invalid YAML: {problem}") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. over-long integers
        raise ConfigError.single(source, "", f"invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError.single(source, "", "invalid YAML: nested too deeply") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file; ConfigError names the file and every problem."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError.single(source, "", "file not found") from None
    except OSError as e:
        raise ConfigError.single(source, "", f"cannot read file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM left by some editors
    except UnicodeDecodeError as e:
        raise ConfigError.single(source, "", f"not UTF-8 text (bad byte at offset {e.start})"
                                 ) from None
    is_yaml = source.lower().endswith(YAML_SUFFIXES)
    data = _parse_yaml(text, source) if is_yaml else _parse_json(text, source)
    # A relative build context is relative to the file, wherever gantry runs from.
    config = parse_config(data, source).with_base_dir(os.path.dirname(os.path.abspath(source)))
    log.debug("loaded %s: components %s", source, ", ".join(config.names))
    return config
