"""Pulls of the desired image on one host, limited fleet-wide by `rollout.maxParallelPulls`.

Pull slots are a pool of their own (`pulls/<slot>` keys on the holder's lease, events
`pull-acquired`/`pull-released`/`pull-failed`/`pull-lost`), apart from the switch slots, as
hoist separates its update and restart governors: a hundred hosts do not pull from one
registry at once, and a host pulls before it asks for a switch slot, so pulls never hold up
switches. Without a limit a host pulls at once and takes no slot.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gantry.errors import GantryError

from .store import PULL, Desired, Slot, Store

# report(status, note): the host's status while it waits for a pull slot or pulls.
Report = Callable[[str, str | None], None]


class Pulls:
    """Pulls for the components of one host (``runtime``: gantry's Runtime)."""

    def __init__(self, store: Store, machine: str, runtime: Any) -> None:
        self.store = store
        self.machine = machine
        self.runtime = runtime
        self.held: dict[str, tuple[Slot, str | None]] = {}  # to release (retried on trouble)

    def pull(self, component: str, desired: Desired, lease: int, report: Report) -> bool:
        """Make sure `desired.image` is here: True once it is; False while waiting for a pull
        slot (a release wakes the hosts). Raises GantryError when the pull fails and
        StoreError when the desired state changed under us."""
        assert desired.image is not None
        self.settle(component)
        if self.runtime.has_image(desired.image):
            return True
        slot = None
        if desired.max_parallel_pulls is not None:
            slot = self.store.acquire_slot(component, desired, self.machine, lease, pool=PULL)
            if slot is None:
                report("waiting", "waiting for a pull slot")
                return False
        report("pulling", None)
        error = None
        try:
            self.runtime.pull(desired.image)
        except GantryError as exc:
            error = str(exc)
            raise
        finally:
            if slot is not None:
                self.held[component] = (slot, error)
                self.settle(component)
        return True

    def settle(self, component: str) -> None:
        """Release the pull slot still held for `component` (an earlier release may have
        failed on etcd trouble: the daemon calls this on every turn)."""
        if component not in self.held:
            return
        slot, error = self.held[component]
        self.store.release_slot(slot, self.machine, "failed" if error else "released",
                                detail=error)
        del self.held[component]
