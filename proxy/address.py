"""Parsing and formatting of `host:port` addresses (pure Python; shared by daemon and client)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from proxy.errors import BadRequest


class Address(NamedTuple):
    """An IP literal and a port. `str()` gives the canonical `host:port` / `[v6]:port`."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


def parse_address(text: object, *, what: str = "address", listen: bool = False) -> Address:
    """Parse `host:port` into an Address or raise BadRequest.

    Hosts must be IP literals (backends are container IPs; resolving names per connection
    would put a DNS lookup in front of every accept). For a listen address an empty host or
    `*` means every IPv4 interface.
    """
    if not isinstance(text, str) or not text:
        raise BadRequest(f"{what} must be a non-empty 'host:port' string, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise BadRequest(f"{what} {text!r} has no port (expected 'host:port')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BadRequest(f"{what} {text!r}: write IPv6 hosts in brackets, e.g. '[::1]:80'")
    if listen and host in ("", "*"):
        host = "0.0.0.0"
    elif host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise BadRequest(f"{what} {text!r}: host {host!r} is not an IP address") from None
    # ASCII digits only (str.isdigit() also takes '²' and other scripts' digits), and few
    # of them: int() of thousands of digits raises.
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 \
            or not 0 < int(port_text) < 65536:
        raise BadRequest(f"{what} {text!r}: port must be 1-65535")
    return Address(host, int(port_text))
