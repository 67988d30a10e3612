"""Prometheus metrics of one server: batch size, queue wait and execution time histograms, requests by
route and status, queue depth. Each app has its own registry (no process-global registration, so two
servers in one process, as in the tests, do not collide)."""

from __future__ import annotations

from typing import Any

from ..errors import MissingDependencyError


class ServeMetrics:
    """The server's metrics in a private ``CollectorRegistry``; :meth:`render` gives the text format."""

    def __init__(self, queue_depth: Any = None):
        try:
            import prometheus_client as prom
        except ModuleNotFoundError as exc:
            raise MissingDependencyError("prometheus_client", "serve", "zreward serve's /metrics") from exc
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.batch_size = prom.Histogram(
            "zreward_batch_size",
            "Items per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_wait = prom.Histogram(
            "zreward_queue_wait_seconds",
            "Time an item waited from its request's arrival to the start of its batch",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.execution = prom.Histogram(
            "zreward_batch_execution_seconds",
            "Time of one batch on the scorer (decode excluded)",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.requests = prom.Counter(
            "zreward_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.items = prom.Counter(
            "zreward_items", "Items by outcome (scored, error, cached)", ["outcome"], registry=self.registry
        )
        self.queue_depth = prom.Gauge(
            "zreward_queue_items", "Items waiting to be scored", registry=self.registry
        )
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)

    def on_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        self.batch_size.observe(size)
        self.execution.observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
