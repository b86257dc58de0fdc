"""The state file: the route table's specs, rewritten atomically on every change."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import BadRequest, RouteError
from proxy.spec import MaintenanceRequest, PauseRequest, RouteSpec, check_name

VERSION = 1


class StateError(Exception):
    """The state file exists but cannot be read (nor set aside): the daemon does not start."""


class CorruptState(StateError):
    """The state file's content is not a route table (hand-edited, disk trouble)."""


@dataclass(frozen=True)
class SavedRoute:
    """One route of the state file: its spec, and its pause and maintenance if set."""

    spec: RouteSpec
    pause: PauseRequest | None = None
    paused_since: float | None = None
    maintenance: str | None = None  # the message while in maintenance

    @classmethod
    def from_json(cls, entry: Any) -> SavedRoute:
        if not isinstance(entry, dict):
            raise BadRequest("a route entry must be an object")
        entry = dict(entry)
        paused, maintenance = entry.pop("paused", None), entry.pop("maintenance", None)
        pause = since = message = None
        if paused is not None:
            if not isinstance(paused, dict):
                raise BadRequest("paused must be an object")
            since = paused.get("since")
            if isinstance(since, bool) or not isinstance(since, (int, float)):
                raise BadRequest("paused.since must be a time")
            pause = PauseRequest.from_json({"maxPause": paused.get("maxPause")})
        if maintenance is not None:
            if not isinstance(maintenance, dict):
                raise BadRequest("maintenance must be an object")
            message = MaintenanceRequest.from_json(
                {"enabled": True, "message": maintenance.get("message")}).message or ""
        return cls(RouteSpec.from_json(entry), pause, since, message)

    def to_json(self) -> dict[str, Any]:
        out = self.spec.to_json()
        if self.pause is not None:
            out["paused"] = {"maxPause": self.pause.max_pause, "since": self.paused_since}
        if self.maintenance is not None:
            out["maintenance"] = {"message": self.maintenance or None}
        return out


def load_state(path: str) -> dict[str, SavedRoute]:
    """Read the routes; a missing file is an empty table; CorruptState for one that cannot
    be read or is not a route table."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CorruptState(f"cannot read state file {path}: {e}") from e
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CorruptState(f"state file {path}: expected version {VERSION}")
        return {check_name(name): SavedRoute.from_json(entry)
                for name, entry in data["routes"].items()}
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError, RouteError) as e:
        raise CorruptState(f"state file {path} is corrupt: {e}") from e


def set_aside(path: str) -> str:
    """Rename an unreadable state file to `<path>.corrupt-<UTC time>` (kept for inspection);
    answers the new name. StateError if even that fails."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.corrupt-{stamp}"
    try:
        os.replace(path, aside)
    except OSError as e:
        raise StateError(f"state file {path} is unreadable and cannot be set aside: {e}") from e
    return aside


def save_state(path: str, routes: dict[str, SavedRoute]) -> None:
    """Write temp file + fsync + rename + fsync(dir): a crash leaves the old or the new file."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data: dict[str, Any] = {"version": VERSION,
                            "routes": {name: r.to_json() for name, r in routes.items()}}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
