"""Every command's --help renders (argparse expands `%` in help strings: a bare `100%` in one
breaks the whole `--help` of its program)."""
from __future__ import annotations

import argparse

import pytest

from gantry.cli import build_parser as gantry_parser
from gantryd.cli import build_parser as gantryd_parser
from proxy.cli import _parser as proxy_parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("build", [gantry_parser, gantryd_parser, proxy_parser],
                         ids=["gantry", "gantryd", "gantry-proxy"])
def test_every_help_renders(build):
    parsers = list(_parsers(build()))
    assert len(parsers) > 5
    for parser in parsers:
        assert parser.format_help().startswith("usage:")
