"""Prometheus metrics of the endpoint through `ray.serve.metrics`: requests, latency and errors per model.

Ray exports them on each node's metrics port (scraped by Prometheus, shown in the Ray dashboard),
tagged with the deployment, replica and route as well as the tags below.
"""
from __future__ import annotations

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


def status_class(code: int) -> str:
    """'2xx', '4xx' or '5xx': the status tag (exact codes would multiply the series)."""
    return f"{code // 100}xx"


class EndpointMetrics:
    """The ingress's counters and histogram; one instance per replica."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "rayiqa_requests", description="HTTP requests by endpoint, model and status class.",
            tag_keys=("endpoint", "model", "status"),
        )
        self.errors = metrics.Counter(
            "rayiqa_errors", description="Requests answered with an error, by model and HTTP code.",
            tag_keys=("endpoint", "model", "code"),
        )
        self.latency = metrics.Histogram(
            "rayiqa_request_latency_ms", description="Request latency in milliseconds, by endpoint and model.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint", "model"),
        )

    def observe(self, endpoint: str, model: str, code: int, latency_ms: float) -> None:
        """Record one answered request."""
        self.requests.inc(tags={"endpoint": endpoint, "model": model, "status": status_class(code)})
        self.latency.observe(latency_ms, tags={"endpoint": endpoint, "model": model})
        if code >= 400:
            self.errors.inc(tags={"endpoint": endpoint, "model": model, "code": str(code)})
