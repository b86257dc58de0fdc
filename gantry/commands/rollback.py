"""``gantry rollback COMPONENT``: back to the image this host ran before (gantry/retention.py)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .. import retention
from ..errors import GantryError


class NothingToRollBackTo(GantryError):
    """No previous image recorded for the component on this host."""


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("rollback", "roll a component back to the image it ran before",
            "A zero-downtime update (same lifecycle as `update`, the config as it is now) to "
            "the image the live container replaced, as this host recorded it; the image is "
            "normally still here (retainImages), else it is pulled by digest. Again: back "
            "to the image rolled back from.")
    p.add_argument("component")


def cmd_rollback(args: argparse.Namespace, life: Any, component: Any) -> int:
    image = retention.previous(life, component)
    if image is None:
        raise NothingToRollBackTo(f"{component.name}: no previous image recorded on this host "
                                  "(nothing was updated here since image retention came in)")
    life.update(component, image=image)
    print(f"{component.name} rolled back to {image}")
    return 0


COMMANDS = {"rollback": cmd_rollback}
