"""Prometheus metrics of one front-end process, recorded by the conversation core for every platform.

Labels are the platform and an error kind, nothing else: never text, user, channel or request ids.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ENQUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class FrontEndError(StrEnum):
    """What went wrong with a question, as the `kind` label of `brandbot_frontend_errors_total`."""

    REDIS_UNREACHABLE = "redis_unreachable"  # intake could not reach Redis: the asker was told
    NOT_QUEUED = "not_queued"  # the request could not be put on its queue
    UNDELIVERABLE = "undeliverable"  # the chat refused the answer's messages
    BUG = "bug"  # an unexpected exception (logged with its site)


class FrontEndMetrics:
    """The front-end's registry (one per process; nothing process-global)."""

    def __init__(self, *, platform: str) -> None:
        self.registry = CollectorRegistry()
        label = {"platform": platform}
        self.events = Counter(
            "brandbot_frontend_events",
            "Questions received from the platform",
            ["platform"],
            registry=self.registry,
        ).labels(**label)
        self.acks = Counter(
            "brandbot_frontend_acks",
            "Questions acknowledged to be answered (after access, de-duplication and rate limit)",
            ["platform"],
            registry=self.registry,
        ).labels(**label)
        self.enqueue_latency = Histogram(
            "brandbot_frontend_enqueue_seconds",
            "From the event reaching the front-end to its job being on the queue",
            ["platform"],
            buckets=ENQUEUE_BUCKETS,
            registry=self.registry,
        ).labels(**label)
        self.answers_in_flight = Gauge(
            "brandbot_frontend_answers_in_flight",
            "Answers this process is relaying now",
            ["platform"],
            registry=self.registry,
        ).labels(**label)
        self._errors = Counter(
            "brandbot_frontend_errors",
            "Questions that met an error, by kind",
            ["platform", "kind"],
            registry=self.registry,
        )
        self._platform = platform

    def error(self, kind: FrontEndError | str) -> None:
        """`kind`: a `FrontEndError`, or a relay outcome (`bots.relay.RelayOutcome.status`): a fixed set."""
        self._errors.labels(platform=self._platform, kind=str(kind)).inc()
