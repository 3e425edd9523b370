"""Prometheus metrics: HTTP requests by route and status, publish latency, and the
hub's own counters read at scrape time.

Each app gets its own registry, so that several apps in one process (tests) do
not collide in the global one. With ``--workers N`` each worker reports its own
figures; scrape them through a per-process port or aggregate in Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventhub_log import EventHub

_PUBLISH_ROUTES = {"/v1/topics/{topic:path}/events", "/v1/events"}
# Scope key: when the request arrived (time.perf_counter()), if something before
# the middleware already spent time on it.
STARTED_KEY = "eventhub.started"


class Metrics:
    def __init__(self, hub: Callable[[], EventHub | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "eventhub_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "eventhub_http_request_duration_seconds",
            "Time to answer HTTP requests (to the response head; streams excluded)",
            ["route", "method"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "eventhub_publish_latency_seconds",
            "REST publish requests, from arrival to the committed answer",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.registry.register(_HubCollector(hub))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram, Histogram | None]] = {}

    def observe_request(self, template: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request answered ``status`` after ``seconds``, by route template."""
        key = (template, method, status)
        # labels() costs more than the observation; the label sets are few (routes
        # times methods times statuses), so their children are looked up once.
        children = self._children.get(key)
        if children is None:
            publish = template in _PUBLISH_ROUTES and method == "POST" and 200 <= status < 300
            children = (
                self.requests.labels(template, method, str(status)),
                self.request_seconds.labels(template, method),
                self.publish_seconds if publish else None,
            )
            self._children[key] = children
        requests, duration, publish_latency = children
        requests.inc()
        duration.observe(seconds)
        if publish_latency is not None:
            publish_latency.observe(seconds)


class _HubCollector(Collector):
    def __init__(self, hub: Callable[[], EventHub | None]) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub()
        published = CounterMetricFamily(
            "eventhub_events_published", "Events committed by this process's writer"
        )
        streams = GaugeMetricFamily("eventhub_open_streams", "Streams open in this process")
        if hub is not None:
            published.add_metric([], hub.events_published)
            streams.add_metric([], hub.open_streams)
        yield published
        yield streams


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its raw path, whose
    topics would make the label set unbounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A request the publish fast path handed over arrived before the body it read.
        started = scope.get(STARTED_KEY) or time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._record(scope, status, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except BaseException:
            if status == 500:
                self._record(scope, 500, time.perf_counter() - started)
            raise

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(template, scope.get("method", ""), status, seconds)
