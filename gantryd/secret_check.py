"""When a host looks at its valueFrom secrets (gantry/secret_env.py).

The fleet's desired state holds only the references, so a secret rotated on a host changes
no config hash: the host itself compares what its live container was given (the salted
digest in its labels) with what it would read now. It does so once per desired revision
(the next `gantryd update` picks a rotated secret up, host by host under the rollout slots)
and at the start of `gantryd run`, never on its own in between: a host does not redeploy at
a moment nobody chose. While the answer is "changed" (the redeploy is pending, failed or
halted) it asks again at each reconcile: a host that failed for a missing file reports
`ready` again once the file is back as it was.
"""
from __future__ import annotations

from typing import Any

from gantry import secret_env

from .rollout import Live
from .store import Desired


class SecretCheck:
    """Per component: the desired revision last checked, and whether a secret had changed."""

    def __init__(self, lifecycle: Any) -> None:
        self.lifecycle = lifecycle
        self.seen: dict[str, tuple[int, bool]] = {}

    def changed(self, component: str, desired: Desired | None, live: Live | None) -> bool:
        """Should this host replace its live container, which otherwise runs `desired`,
        because a valueFrom value changed here?"""
        if (desired is None or desired.status != "ready" or desired.canary is not None
                or not desired.component or live is None or live.local
                or live.canary is not None):
            return False  # a new container comes anyway, or none should, or not ours
        if self.seen.get(component) == (desired.revision, False):
            return False
        model = desired.model()
        # Without references the config hash tells everything (it covers the references).
        result = bool(secret_env.references(model)) and secret_env.stale(self.lifecycle, model)
        self.seen[component] = (desired.revision, result)
        return result

    def deployed(self, component: str, revision: int) -> None:
        """A container of `revision` was just made here with the values read now: nothing to
        compare until the next desired revision (a secret rotated right after the deploy
        waits for the next update, like any other)."""
        self.seen[component] = (revision, False)
