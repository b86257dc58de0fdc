"""The state file: the route table's specs, rewritten atomically on every change."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from proxy.errors import RouteError
from proxy.spec import RouteSpec, check_name

VERSION = 1


class StateError(Exception):
    """The state file exists but cannot be read; the daemon refuses to start over it."""


def load_state(path: str) -> dict[str, RouteSpec]:
    """Read route specs; a missing file is an empty table."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise StateError(f"cannot read state file {path}: {e}") from e
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError(f"state file {path}: expected version {VERSION}")
        return {check_name(name): RouteSpec.from_json(spec)
                for name, spec in data["routes"].items()}
    except (ValueError, KeyError, AttributeError, RouteError) as e:
        raise StateError(f"state file {path} is corrupt: {e}") from e


def save_state(path: str, specs: dict[str, RouteSpec]) -> None:
    """Write temp file + fsync + rename + fsync(dir): a crash leaves the old or the new file."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data: dict[str, Any] = {"version": VERSION,
                            "routes": {name: spec.to_json() for name, spec in specs.items()}}
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
