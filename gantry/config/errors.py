"""Errors raised for invalid configuration: every problem of a file, at once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration: where it is (file and path inside it) and what is wrong."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        if self.path:
            return f"{self.source}: {self.path}: {self.message}"
        return f"{self.source}: {self.message}"


class ConfigError(Exception):
    """A configuration could not be loaded; ``errors`` lists every issue found."""

    def __init__(self, errors: Iterable[ConfigIssue]):
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))

    @classmethod
    def single(cls, source: str, path: str, message: str) -> "ConfigError":
        """Build an error holding one issue."""
        return cls([ConfigIssue(source, path, message)])
