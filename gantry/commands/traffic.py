"""``gantry pause|resume|maintenance COMPONENT``: the component's traffic on this host."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .. import traffic


def seconds_arg(text: str) -> float:
    """argparse type: a positive number of seconds."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("pause", "hold new connections of a component until `gantry resume`",
            "Every route of the component accepts new connections but holds them (not sent to "
            "any container) until resume, which sends them, in order, to the container live "
            "then: an update during the pause is answered by the new version. A connection "
            "held longer than --max-pause is closed (http: 504).")
    p.add_argument("component")
    p.add_argument("--max-pause", type=seconds_arg, default=traffic.DEFAULT_MAX_PAUSE,
                   metavar="S", help="hold each connection at most S seconds (default 30)")
    p = add("resume", "end a pause: send the held connections on",
            "The held connections go, in accept order, to the component's live container.")
    p.add_argument("component")
    p = add("maintenance", "answer a component's new connections with 503 (on) or not (off)",
            "on: http routes answer every new connection with 503 and a small page carrying "
            "--message; tcp routes close them. off: back to normal. Live connections are not "
            "touched.")
    p.add_argument("component")
    p.add_argument("state", choices=("on", "off"))
    p.add_argument("--message", default=None, help="text of the maintenance page")


def _show(component: str, what: str, routes: list[dict]) -> int:
    print(f"{component}: {what} ({', '.join(r['name'] for r in routes)})")
    return 0


def cmd_pause(args: argparse.Namespace, life: Any, component: Any) -> int:
    routes = traffic.pause(life, component.name, args.max_pause)
    return _show(component.name, f"paused, at most {args.max_pause:g}s per connection", routes)


def cmd_resume(args: argparse.Namespace, life: Any, component: Any) -> int:
    return _show(component.name, "resumed", traffic.resume(life, component.name))


def cmd_maintenance(args: argparse.Namespace, life: Any, component: Any) -> int:
    on = args.state == "on"
    routes = traffic.maintenance(life, component.name, on, args.message if on else None)
    return _show(component.name, f"maintenance {args.state}", routes)


COMMANDS = {"pause": cmd_pause, "resume": cmd_resume, "maintenance": cmd_maintenance}
