"""Environment variables whose value comes from the host (``valueFrom``): a file, or the
environment of the process that creates the container (``gantry``, ``gantryd run``).

They are read when a container is created, on the host that creates it, so the value never
enters the config, etcd, the config hash, labels or any output. What a container was given
is recorded in its label ``io.gantry.secrets`` as a salted scrypt digest (never the value):
:func:`changed` tells from it that a secret changed on this host since, so the next update
there picks the new value up (docs/fleet.md, "Secrets").
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import GantryError

# Linux refuses a single environment string longer than this (MAX_ARG_STRLEN).
MAX_BYTES = 128 * 1024
# Values this short are not redacted from messages: that would garble them for nothing.
MIN_REDACT = 4
REDACTED = "***"
# scrypt: memory-hard, so a digest in a label (which tools export where the environment
# does not go) does not let anyone test guesses of a weak password cheaply.
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 16}


class SecretError(GantryError):
    """A ``valueFrom`` value cannot be read on this host (the message names the variable and
    where it was looked for, never a value)."""


@dataclass(frozen=True)
class Resolved:
    """A component's container environment as read on this host."""

    env: dict[str, str]  # the whole environment: literal values and valueFrom ones
    secrets: dict[str, str] = field(repr=False)  # the valueFrom part alone

    def __repr__(self) -> str:
        return f"Resolved(names={list(self.env)})"

    def label(self) -> str:
        """The ``io.gantry.secrets`` label: "" without secrets, else ``<salt>:<digest>``."""
        return digest(self.secrets, os.urandom(16)) if self.secrets else ""


def references(component: Any) -> tuple[Any, ...]:
    """The component's ``valueFrom`` variables."""
    return tuple(e for e in component.environment if e.value_from is not None)


def read(var: Any, origin: str = "gantry", environ: Mapping[str, str] | None = None) -> str:
    """The value of one ``valueFrom`` variable on this host; SecretError when it cannot be
    read. ``origin``: who reads it (``gantry``, ``gantryd``, ``watch``), for the message."""
    source = var.value_from
    if source.file is None:
        environ = os.environ if environ is None else environ
        if source.env not in environ:
            raise SecretError(f"environment variable {var.name}: valueFrom env {source.env} "
                              f"is not set in the environment of {_process(origin)}")
        return environ[source.env]
    where = f"environment variable {var.name}: valueFrom file {source.file}"
    try:
        # Non-blocking: a FIFO (or a device) given by mistake must not hang the update.
        with open(os.open(source.file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SecretError(f"{where}: not a regular file")
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:  # strerror only: the path is named already, the content never
        raise SecretError(f"{where}: cannot read it ({exc.strerror or type(exc).__name__})") \
            from None
    if len(data) > MAX_BYTES:
        raise SecretError(f"{where}: longer than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{where}: not UTF-8 text") from None
    if "\x00" in text:
        raise SecretError(f"{where}: holds a NUL byte, which no environment variable can")
    return text.rstrip("\r\n")  # as $(cat FILE) would: files written by editors end in one


def resolve(component: Any, origin: str = "gantry") -> Resolved:
    """The container environment of ``component`` on this host; SecretError naming every
    variable that cannot be read."""
    values, problems = {}, []
    for var in references(component):
        try:
            values[var.name] = read(var, origin)
        except SecretError as exc:
            problems.append(str(exc))
    if problems:
        raise SecretError("; ".join(problems))
    env = {e.name: values[e.name] if e.value_from is not None else e.value
           for e in component.environment}
    return Resolved(env, values)


def digest(secrets: Mapping[str, str], salt: bytes) -> str:
    """``<salt hex>:<scrypt hex>`` of the (name, value) pairs."""
    canonical = json.dumps(sorted(secrets.items()), ensure_ascii=False).encode("utf-8")
    return f"{salt.hex()}:{hashlib.scrypt(canonical, salt=salt, **_SCRYPT).hex()}"


def changed(component: Any, label: str, origin: str = "gantry") -> bool:
    """Would a container created now get other ``valueFrom`` values than the one labelled
    ``label`` got? True as well when one cannot be read: a new container would fail, and say
    why, rather than keep a value the host no longer has."""
    if not references(component):
        return bool(label)
    try:
        secrets = resolve(component, origin).secrets
        salt = bytes.fromhex(label.partition(":")[0])
    except (SecretError, ValueError):
        return True
    return not label or not hmac.compare_digest(digest(secrets, salt), label)


def stale(life: Any, component: Any) -> bool:
    """Did a ``valueFrom`` value of the live container of ``component`` change on this host
    (``life``: a gantry Lifecycle)? False when nothing is live."""
    current = life.current(component)
    info = life.runtime.inspect(current.id) if current is not None else None
    return info is not None and changed(component, info.labels.secrets, life.host.origin)


def redact(text: str, component: Any, origin: str = "gantry") -> str:
    """``text`` with every ``valueFrom`` value of ``component`` readable here (and each longer
    line of a multi-line one) replaced by ``***``: for messages that quote a container's own
    output or a Docker error."""
    pieces: set[str] = set()
    for var in references(component):
        try:
            value = read(var, origin)
        except SecretError:
            continue
        pieces |= {p for p in (value, *value.splitlines()) if len(p.strip()) >= MIN_REDACT}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text


def _process(origin: str) -> str:
    return {"gantryd": "gantryd run", "watch": "gantry watch"}.get(origin, "gantry") + \
        f" (pid {os.getpid()})"
