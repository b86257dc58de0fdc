"""The `.gantry` config: loading, strict validation and the typed, immutable model.

See docs/config.md (generated from the field declarations in :mod:`gantry.config.model`).
"""
from .errors import ConfigError, ConfigIssue
from .loader import load_config
from .model import (
    Binding, Build, Check, Component, Config, EnvVar, Port, Rollout, TerminationSignal,
    parse_config,
)

__all__ = [
    "Binding", "Build", "Check", "Component", "Config", "ConfigError", "ConfigIssue", "EnvVar",
    "Port", "Rollout", "TerminationSignal", "load_config", "parse_config",
]
