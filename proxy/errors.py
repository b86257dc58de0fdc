"""Errors the route table raises (the control API maps each to an HTTP status), and the
errors its callers see (raised by proxy.client; here so that catching them does not import
the client's HTTP machinery into the daemon)."""


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


class ProxyError(Exception):
    """The proxy answered with an error; `status` is the HTTP status (0 if none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class ProxyNotRunning(ProxyError):
    """Nothing answers on the control socket."""
