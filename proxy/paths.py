"""Default locations of the control socket and the state file."""

from __future__ import annotations

import os
from pathlib import Path


def default_socket_path() -> str:
    """`$GANTRY_PROXY_SOCKET`, else `/run/gantry/proxy.sock` as root, else under the runtime dir."""
    env = os.environ.get("GANTRY_PROXY_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/gantry/proxy.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/gantry-{os.geteuid()}"
    return str(Path(runtime) / "gantry" / "proxy.sock")


def default_state_path() -> str:
    """`$GANTRY_PROXY_STATE`, else `/var/lib/gantry/proxy-state.json` as root, else XDG state."""
    env = os.environ.get("GANTRY_PROXY_STATE")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/gantry/proxy-state.json"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "gantry" / "proxy-state.json")


def log_path_for(state_path: str) -> str:
    """The log file a detached proxy writes, beside its state file."""
    return str(Path(state_path).with_name("gantry-proxy.log"))


def keeper_socket_path(control_socket: str) -> str:
    """The listener keeper's socket of the proxy on `control_socket`: one keeper per proxy."""
    return control_socket + ".listeners"


def retiring_socket_path(control_socket: str, pid: int) -> str:
    """Where a daemon that handed over to a new one answers until its connections end."""
    return f"{control_socket}.retiring-{pid}"


def retiring_sockets(control_socket: str) -> list[str]:
    """The sockets of the daemons that handed over on `control_socket` and may still carry
    connections (a file left by one killed since does not answer)."""
    import glob
    return sorted(glob.glob(glob.escape(control_socket) + ".retiring-*"))
