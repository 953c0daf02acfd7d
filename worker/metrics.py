"""Prometheus metrics of one worker process, in their own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from worker.engines.base import GenerationResult

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
RATE_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320)


class WorkerMetrics:
    def __init__(self, *, model: str, engine: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model, "engine": engine}
        self.queue_depth = Gauge(
            "brandbot_queue_depth",
            "Requests waiting on this model's queue",
            ["model"],
            registry=self.registry,
        ).labels(model=model)
        self.in_flight = Gauge(
            "brandbot_jobs_in_flight", "Requests generating now", ["model", "engine"], registry=self.registry
        ).labels(**labels)
        self.tokens = Counter(
            "brandbot_tokens_generated",
            "Completion tokens generated",
            ["model", "engine"],
            registry=self.registry,
        ).labels(**labels)
        self.engine_requests = Gauge(
            "brandbot_engine_requests",
            "Requests inside the engine (generating or waiting for a place)",
            ["model", "engine"],
            registry=self.registry,
        ).labels(**labels)
        self.ttft = Histogram(
            "brandbot_time_to_first_token_seconds",
            "Submit to first token",
            ["model", "engine"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.tokens_per_second = Histogram(
            "brandbot_tokens_per_second",
            "Completion tokens per second, per request",
            ["model", "engine"],
            buckets=RATE_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self._outcomes = Counter(
            "brandbot_requests",
            "Finished requests by outcome",
            ["model", "outcome", "reason"],
            registry=self.registry,
        )
        self._model = model

    def serve(self, port: int, *, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def job_started(self) -> None:
        self.in_flight.inc()

    def job_ended(self) -> None:
        self.in_flight.dec()

    def outcome(self, outcome: str, reason: str) -> None:
        self._outcomes.labels(model=self._model, outcome=outcome, reason=reason).inc()

    def finished(self, result: GenerationResult) -> None:
        self.tokens.inc(result.completion_tokens)
        if result.time_to_first_token_ms is not None:
            self.ttft.observe(result.time_to_first_token_ms / 1000)
        if result.completion_tokens and result.total_ms > 0:
            self.tokens_per_second.observe(result.completion_tokens / (result.total_ms / 1000))
        self.outcome("done", result.finish_reason.value)
