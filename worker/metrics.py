"""Prometheus metrics of one worker process, in their own registry (no process-global state)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.engines.base import GenerationResult

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
RATE_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320)

TOKEN_RATE_WINDOW_SECONDS = 60.0
"""`brandbot status` shows each worker's completion tokens per second over this window."""


class TokenRate:
    """Completion tokens per second of the answers finished within the last `window` seconds."""

    def __init__(self, window: float = TOKEN_RATE_WINDOW_SECONDS) -> None:
        self._window = window
        self._started = time.monotonic()
        self._finished: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, tokens: int) -> None:
        with self._lock:
            self._finished.append((time.monotonic(), tokens))

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._finished and self._finished[0][0] < now - self._window:
                self._finished.popleft()
            tokens = sum(count for _, count in self._finished)
        # A worker up for less than the window is not diluted by time it did not exist.
        return tokens / max(min(self._window, now - self._started), 1.0)


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
        self.token_rate = TokenRate()

    def job_started(self) -> None:
        self.in_flight.inc()

    def job_ended(self) -> None:
        self.in_flight.dec()

    def outcome(self, outcome: str, reason: str) -> None:
        self._outcomes.labels(model=self._model, outcome=outcome, reason=reason).inc()

    def finished(self, result: GenerationResult) -> None:
        self.tokens.inc(result.completion_tokens)
        self.token_rate.add(result.completion_tokens)
        if result.time_to_first_token_ms is not None:
            self.ttft.observe(result.time_to_first_token_ms / 1000)
        if result.completion_tokens and result.total_ms > 0:
            self.tokens_per_second.observe(result.completion_tokens / (result.total_ms / 1000))
        self.outcome("done", result.finish_reason.value)
