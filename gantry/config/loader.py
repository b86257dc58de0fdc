"""Reading `.gantry` files: JSON, or YAML when the name ends in ``.yml``/``.yaml``."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

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
    if is_yaml:
        from .yaml_reader import parse_yaml  # PyYAML: only for .yml files (not in gantryd run)
        data = parse_yaml(text, source)
    else:
        data = _parse_json(text, source)
    # A relative build context is relative to the file, wherever gantry runs from.
    config = parse_config(data, source).with_base_dir(os.path.dirname(os.path.abspath(source)))
    log.debug("loaded %s: components %s", source, ", ".join(config.names))
    return config
