"""YAML config files: PyYAML's safe loader, refusing duplicate keys."""
from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


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


def parse_yaml(text: str, source: str) -> Any:
    """The document in `text`; ConfigError (naming `source` and the line) if it is not YAML."""
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
