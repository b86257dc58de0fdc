"""Errors the route table raises; the control API maps each to an HTTP status."""


class RouteError(Exception):
    """A request the route table refuses; `status` is the HTTP status to answer."""

    status = 400


class BadRequest(RouteError):
    """Malformed input: bad JSON, bad address, bad kind, unknown key."""

    status = 400


class NotFound(RouteError):
    """No such route."""

    status = 404


class Conflict(RouteError):
    """The request cannot be applied now, e.g. the listen port is in use."""

    status = 409
