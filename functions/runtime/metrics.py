"""Prometheus metrics of the worker, served on a loopback port (``mailplane worker --metrics-port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from functions.runtime.dispatch import Result


class Metrics:
    """completed / retried / parked / requeued counters, a duration histogram and the in-flight gauge."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["type"]
        self.completed = Counter("mailplane_events_completed", "events handled", labels, registry=self.registry)
        self.retried = Counter(
            "mailplane_events_retried", "events sent to a retry rung", labels, registry=self.registry
        )
        self.parked = Counter("mailplane_events_parked", "events parked with a reason", labels, registry=self.registry)
        self.requeued = Counter("mailplane_events_requeued", "events given back", labels, registry=self.registry)
        self.duration = Histogram(
            "mailplane_event_duration_seconds",
            "handler time per event",
            labels,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge("mailplane_events_in_flight", "events being handled", registry=self.registry)

    def observe(self, result: Result) -> None:
        etype = result.event.type if result.event else "invalid"
        counter = {"done": self.completed, "retry": self.retried, "park": self.parked}.get(
            result.verdict, self.requeued
        )
        counter.labels(etype).inc()
        self.duration.labels(etype).observe(result.duration)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on addr:port: loopback by default; 0.0.0.0 in a pod behind its NetworkPolicy
        (``--metrics-bind`` / $MAILPLANE_METRICS_BIND, infra/deploy/k8s/)."""
        start_http_server(port, addr=addr, registry=self.registry)
