"""Exceptions raised by the gantry library.

Every error gantry means to report to a user derives from :class:`GantryError`; its ``str()`` is a
one-line, human-readable message. The CLI prints it and exits 1. Config errors are
``gantry.config.ConfigError`` (not a GantryError: the CLI exits 2 for them).
"""
from __future__ import annotations


class GantryError(Exception):
    """Base class of gantry's operational errors."""


class DockerUnavailable(GantryError):
    """The Docker engine cannot be reached."""


class DockerFailed(GantryError):
    """The Docker engine refused or failed an operation."""


class ImageError(GantryError):
    """The image cannot be resolved to a digest or pulled."""


class BuildFailed(ImageError):
    """The image could not be built from its context (the message is the builder's error)."""


class Cancelled(Exception):
    """An update was given up before its switch because a newer one was asked for (SIGHUP).
    Not a GantryError: nothing failed, and the caller starts over."""


class CheckFailed(GantryError):
    """Ready/health/termination checks did not pass before their deadline."""


class ContainerExited(CheckFailed):
    """The container exited while it was being checked."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UpdateFailed(GantryError):
    """A new container could not be brought live; the previous one keeps serving."""


class RouteError(GantryError):
    """The proxy could not be reached or refused a route change."""


class LockBusy(GantryError):
    """Another gantry process holds the component lock (and we were told not to wait)."""
