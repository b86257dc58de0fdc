"""Validation of the JSON bodies the control API accepts (and the state file re-uses)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from proxy.address import Address, parse_address
from proxy.errors import BadRequest

KINDS = ("tcp", "http")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def check_name(name: str) -> str:
    """Route names: letters, digits and `_.:-`, starting with a letter or digit."""
    if not _NAME.fullmatch(name):
        raise BadRequest(f"bad route name {name!r}: use letters, digits and '_.:-' (max 200)")
    return name


def _object(body: Any, what: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"{what}: unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    return body


def _seconds(value: Any, what: str, *, allow_null: bool, allow_zero: bool) -> float | None:
    if value is None and allow_null:
        return None
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            pass
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        kind = ">= 0" if allow_zero else "> 0"
        raise BadRequest(f"{what} must be a number of seconds {kind}"
                         f"{' or null' if allow_null else ''}, got {value!r}")
    return number


@dataclass(frozen=True)
class RouteSpec:
    """What a route is made of: `PUT /routes/<name>` body and one state file entry."""

    listen: Address
    backend: Address
    kind: str = "tcp"
    idle_timeout: float | None = None

    @classmethod
    def from_json(cls, body: Any) -> RouteSpec:
        body = _object(body, "route", {"listen", "backend", "kind", "idleTimeout"})
        for key in ("listen", "backend"):
            if key not in body:
                raise BadRequest(f"route: missing key {key!r}")
        kind = body.get("kind", "tcp")
        if kind not in KINDS:
            raise BadRequest(f"bad kind {kind!r}: must be one of {', '.join(KINDS)}")
        return cls(
            listen=parse_address(body["listen"], what="listen", listen=True),
            backend=parse_address(body["backend"], what="backend"),
            kind=kind,
            idle_timeout=_seconds(body.get("idleTimeout"), "idleTimeout",
                                  allow_null=True, allow_zero=False),
        )

    def to_json(self) -> dict[str, Any]:
        return {"listen": str(self.listen), "backend": str(self.backend), "kind": self.kind,
                "idleTimeout": self.idle_timeout}


@dataclass(frozen=True)
class DrainRequest:
    """`POST /routes/<name>/drain` body."""

    backend: Address
    timeout: float = 30.0
    close: bool = False

    @classmethod
    def from_json(cls, body: Any) -> DrainRequest:
        body = _object(body, "drain", {"backend", "timeout", "close"})
        if "backend" not in body:
            raise BadRequest("drain: missing key 'backend'")
        close = body.get("close", False)
        if not isinstance(close, bool):
            raise BadRequest(f"close must be true or false, got {close!r}")
        timeout = _seconds(body.get("timeout", 30.0), "timeout", allow_null=False, allow_zero=True)
        assert timeout is not None
        return cls(parse_address(body["backend"], what="backend"), timeout, close)
