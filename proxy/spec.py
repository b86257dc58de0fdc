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


MAX_BACKENDS = 16
MAX_WEIGHT = 10_000
MAX_MESSAGE = 2_000
Weighted = tuple[tuple[Address, int], ...]


@dataclass(frozen=True)
class RouteSpec:
    """What a route is made of: `PUT /routes/<name>` body and one state file entry.

    `backend` is the primary backend. `weights`, when not empty, is the whole active set
    (`backend` first) with the share of new connections each gets; `sticky` keeps a client
    address on one of them.
    """

    listen: Address
    backend: Address
    kind: str = "tcp"
    idle_timeout: float | None = None
    weights: Weighted = ()
    sticky: bool = False

    @property
    def active(self) -> Weighted:
        """The active set as (address, weight) pairs."""
        return self.weights or ((self.backend, 1),)

    @classmethod
    def from_json(cls, body: Any) -> RouteSpec:
        body = _object(body, "route",
                       {"listen", "backend", "backends", "sticky", "kind", "idleTimeout"})
        if "listen" not in body:
            raise BadRequest("route: missing key 'listen'")
        if ("backend" in body and body["backend"] is not None) == ("backends" in body):
            raise BadRequest("route: give exactly one of 'backend' (one address) and "
                             "'backends' (a list of {address, weight})")
        kind = body.get("kind", "tcp")
        if kind not in KINDS:
            raise BadRequest(f"bad kind {kind!r}: must be one of {', '.join(KINDS)}")
        sticky = _flag(body.get("sticky", False), "sticky")
        weights: Weighted = ()
        if "backends" in body:
            weights = _weighted(body["backends"])
            backend = weights[0][0]
        else:
            backend = parse_address(body["backend"], what="backend")
        return cls(
            listen=parse_address(body["listen"], what="listen", listen=True),
            backend=backend,
            kind=kind,
            idle_timeout=_seconds(body.get("idleTimeout"), "idleTimeout",
                                  allow_null=True, allow_zero=False),
            weights=weights,
            sticky=sticky,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": str(self.listen), "kind": self.kind,
                               "idleTimeout": self.idle_timeout}
        if self.weights:
            out["backends"] = [{"address": str(a), "weight": w} for a, w in self.weights]
            out["sticky"] = self.sticky
        else:
            out["backend"] = str(self.backend)
        return out


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false, got {value!r}")
    return value


def _weighted(value: Any) -> Weighted:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BACKENDS:
        raise BadRequest(f"backends must be a list of 1 to {MAX_BACKENDS} "
                         f"{{address, weight}} objects, got {value!r:.200}")
    out: list[tuple[Address, int]] = []
    for i, item in enumerate(value):
        item = _object(item, f"backends[{i}]", {"address", "weight"})
        if "address" not in item:
            raise BadRequest(f"backends[{i}]: missing key 'address'")
        address = parse_address(item["address"], what=f"backends[{i}].address")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) \
                or not 1 <= weight <= MAX_WEIGHT:
            raise BadRequest(f"backends[{i}].weight must be an integer 1-{MAX_WEIGHT}, "
                             f"got {weight!r:.100}")
        if any(address == seen for seen, _ in out):
            raise BadRequest(f"backends[{i}]: {address} is listed twice")
        out.append((address, weight))
    return tuple(out)


@dataclass(frozen=True)
class PauseRequest:
    """`POST /routes/<name>/pause` body: how long each held connection may wait."""

    max_pause: float = 30.0

    @classmethod
    def from_json(cls, body: Any) -> PauseRequest:
        body = _object({} if body is None else body, "pause", {"maxPause"})
        max_pause = _seconds(body.get("maxPause", 30.0), "maxPause", allow_null=False,
                             allow_zero=False)
        assert max_pause is not None
        return cls(min(max_pause, 86_400.0))


@dataclass(frozen=True)
class MaintenanceRequest:
    """`POST /routes/<name>/maintenance` body."""

    enabled: bool
    message: str | None = None

    @classmethod
    def from_json(cls, body: Any) -> MaintenanceRequest:
        body = _object(body, "maintenance", {"enabled", "message"})
        if "enabled" not in body:
            raise BadRequest("maintenance: missing key 'enabled'")
        message = body.get("message")
        if message is not None and (not isinstance(message, str)
                                    or len(message) > MAX_MESSAGE):
            raise BadRequest(f"message must be a string of at most {MAX_MESSAGE} characters "
                             f"or null, got {message!r:.100}")
        return cls(_flag(body["enabled"], "enabled"), message)


def empty_body(body: Any, what: str) -> None:
    """Calls without parameters accept no body, `null` or `{}`."""
    if body is not None:
        _object(body, what, set())


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
        close = _flag(body.get("close", False), "close")
        timeout = _seconds(body.get("timeout", 30.0), "timeout", allow_null=False, allow_zero=True)
        assert timeout is not None
        return cls(parse_address(body["backend"], what="backend"), timeout, close)
