"""Prometheus metrics, collected from the live counters at scrape time."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from proxy.backend import ACTIVE
from proxy.http import HTTPFactory, Request, Response
from proxy.router import Router


class RouterCollector(Collector):
    """Reads the route table; runs in the reactor thread (see MetricsPage)."""

    def __init__(self, router: Router):
        self.router = router

    def collect(self) -> Iterator[Any]:
        b_labels = ["route", "backend"]
        live = GaugeMetricFamily("gantry_proxy_backend_connections_live",
                                 "Live connections per backend", labels=b_labels)
        opened = CounterMetricFamily("gantry_proxy_backend_connections",
                                     "Connections accepted per backend", labels=b_labels)
        nbytes = CounterMetricFamily("gantry_proxy_backend_bytes",
                                     "Bytes forwarded per backend (in: from clients)",
                                     labels=b_labels + ["direction"])
        errors = CounterMetricFamily("gantry_proxy_backend_errors",
                                     "Failed backend connects", labels=b_labels)
        active = GaugeMetricFamily("gantry_proxy_backend_active",
                                   "1 for a backend new connections go to, 0 while draining",
                                   labels=b_labels)
        r_live = GaugeMetricFamily("gantry_proxy_route_connections_live",
                                   "Live connections per route", labels=["route"])
        r_opened = CounterMetricFamily("gantry_proxy_route_connections",
                                       "Connections accepted per route", labels=["route"])
        r_bytes = CounterMetricFamily("gantry_proxy_route_bytes", "Bytes forwarded per route",
                                      labels=["route", "direction"])
        r_errors = CounterMetricFamily("gantry_proxy_route_errors",
                                       "Failed backend connects per route", labels=["route"])
        up = GaugeMetricFamily("gantry_proxy_route_listening",
                               "1 if the route's listener is bound", labels=["route"])
        drains = CounterMetricFamily("gantry_proxy_drains",
                                     "Drain calls by outcome (completed, forced, timeout)",
                                     labels=["route", "result"])
        held = GaugeMetricFamily("gantry_proxy_route_held",
                                 "Connections held by a pause", labels=["route"])
        gated = GaugeMetricFamily("gantry_proxy_route_gate",
                                  "1 while the route is paused / in maintenance",
                                  labels=["route", "gate"])
        for name, route in self.router.routes.items():
            held.add_metric([name], route.held)
            gated.add_metric([name, "pause"], 1 if route.pause is not None else 0)
            gated.add_metric([name, "maintenance"], 1 if route.maintenance is not None else 0)
            for backend in route.backends.values():
                labels = [name, str(backend.address)]
                active.add_metric(labels, backend.weight if backend.state == ACTIVE else 0)
                live.add_metric(labels, backend.live)
                opened.add_metric(labels, backend.opened)
                nbytes.add_metric(labels + ["in"], backend.bytes_in)
                nbytes.add_metric(labels + ["out"], backend.bytes_out)
                errors.add_metric(labels, backend.errors)
            totals = route.totals()
            r_live.add_metric([name], totals["live"])
            r_opened.add_metric([name], totals["opened"])
            r_bytes.add_metric([name, "in"], totals["bytesIn"])
            r_bytes.add_metric([name, "out"], totals["bytesOut"])
            r_errors.add_metric([name], totals["errors"])
            up.add_metric([name], 1 if route.port is not None else 0)
            for result, count in route.drains.items():
                drains.add_metric([name, result], count)
        yield from (live, active, opened, nbytes, errors, r_live, r_opened, r_bytes, r_errors, up,
                    drains, held, gated)


class MetricsPage:
    """Serves the registry synchronously in the reactor thread (prometheus_client's own
    Twisted resource scrapes from a thread pool, which would race the counters)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET\n", "text/plain", {"Allow": "GET, HEAD"})
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


def listen_metrics(reactor: Any, router: Router, host: str, port: int) -> Any:
    """Serve `/metrics` (any path, in fact) on host:port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return reactor.listenTCP(port, HTTPFactory(MetricsPage(registry)), interface=host)
