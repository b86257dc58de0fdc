"""Listening: the routes of every module on one Twisted site, plain TCP or TLS."""
from __future__ import annotations

import logging
from typing import Any

from twisted.web import server

from . import api, hooks, metrics, page
from .app import Channel, LimitedRequest, Routes, ServeContext, ServeResource

log = logging.getLogger("gantryd.serve")

MODULES = (api, hooks, page, metrics)
THREADS = 64  # handlers block in etcd calls; wait_for long-polls hold one each


def build_site(ctx: ServeContext) -> server.Site:
    """The site answering every route of every module."""
    routes = Routes()
    for module in MODULES:
        module.register(routes, ctx)
    site = server.Site(ServeResource(ctx, routes))
    site.requestFactory = LimitedRequest
    site.protocol = Channel  # HTTP/1.1 only; JSON answers to what Twisted cannot parse
    site.displayTracebacks = False
    return site


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` (ValueError otherwise)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def listen(reactor: Any, site: server.Site, address: str, tls_cert: str | None = None,
           tls_key: str | None = None) -> Any:
    """Listen on `address` (TLS with the PEM certificate and key when given)."""
    host, port = parse_listen(address)
    if tls_cert:
        from twisted.internet import ssl
        with open(tls_cert, "rb") as f:
            cert = f.read()
        with open(tls_key or tls_cert, "rb") as f:
            key = f.read()
        options = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
        return reactor.listenSSL(port, site, options, interface=host)
    return reactor.listenTCP(port, site, interface=host)


def run(ctx: ServeContext, address: str, tls_cert: str | None = None,
        tls_key: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM."""
    from twisted.internet import reactor
    reactor.suggestThreadPoolSize(THREADS)
    # Before the thread pool is joined: long polls answer now rather than at their timeout.
    reactor.addSystemEventTrigger("before", "shutdown", ctx.stopping.set)
    port = listen(reactor, build_site(ctx), address, tls_cert, tls_key)
    where = port.getHost()
    log.info("serving on %s://%s:%d", "https" if tls_cert else "http", where.host, where.port)
    print(f"gantryd serve: listening on {'https' if tls_cert else 'http'}://{where.host}:"
          f"{where.port}", flush=True)
    reactor.run()
    return 0
