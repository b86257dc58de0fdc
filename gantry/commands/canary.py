"""``gantry update COMPONENT --canary PCT``, ``gantry promote|abort COMPONENT``: a weighted
canary on this host (:mod:`gantry.canary`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from ..canary import Canary, check_percent


def percent_arg(text: str) -> int:
    """argparse type: a canary percentage, 1-99."""
    try:
        return check_percent(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole percentage 1-99, not {text!r}") \
            from None


def add_canary_option(parser: argparse.ArgumentParser) -> None:
    """``--canary PCT`` of ``update``."""
    parser.add_argument(
        "--canary", type=percent_arg, metavar="PCT",
        help="instead of switching, send PCT%% of new connections to the new container and "
             "keep the old one serving the rest (then `promote` or `abort`)")


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("promote", "make a component's canary its only container",
            "Every route sends all new connections to the canary; the old container drains "
            "(up to drainTimeout), is stopped and removed, as after an update.")
    p.add_argument("component")
    p = add("abort", "drop a component's canary: back to 100%% on the old container",
            "Every route sends all new connections to the old container again; the canary "
            "drains, is stopped and removed.")
    p.add_argument("component")


def cmd_update(args: argparse.Namespace, life: Any, component: Any) -> int:
    Canary(life).start(component, args.canary)
    return 0


def cmd_promote(args: argparse.Namespace, life: Any, component: Any) -> int:
    Canary(life).promote(component)
    return 0


def cmd_abort(args: argparse.Namespace, life: Any, component: Any) -> int:
    Canary(life).abort(component)
    return 0


COMMANDS = {"promote": cmd_promote, "abort": cmd_abort}
