"""Each process's small HTTP server for orchestrators: `/metrics`, `/healthz` and `/readyz`.

Served on `BRANDBOT_METRICS_HOST:BRANDBOT_METRICS_PORT` in a thread of its own (the worker's main thread
supervises slots; a front-end's event loop must not be blocked by a scrape):

- `/healthz` — the process is alive and serving HTTP: always 200.
- `/readyz` — 200 when every check passes (Redis answers a PING; the worker's model is loaded; a front-end
  is connected to its platform), else 503 with one line naming what is not ready.
- `/metrics` — the process's Prometheus registry.

```python
readiness = Readiness(redis=probe_client(settings))
readiness.add("model loaded", lambda: engine is not None)
serve_ops(settings, registry=metrics.registry, readiness=readiness)
```
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app

from brandbot.connections import sync_client
from brandbot.errors import BrandbotError
from brandbot.settings import Settings

PROBE_TIMEOUT_SECONDS = 1.0
"""`/readyz` pings Redis with this timeout: an orchestrator's probe must get an answer, not hang."""

Check = Callable[[], bool]


class Readiness:
    """Named checks behind `/readyz`; a check that raises counts as not ready."""

    def __init__(self, *, redis_client: redis.Redis | None = None) -> None:
        self._checks: list[tuple[str, Check]] = []
        if redis_client is not None:
            self.add("redis reachable", lambda: bool(redis_client.ping()))

    def add(self, name: str, check: Check) -> None:
        self._checks.append((name, check))

    def failing(self) -> list[str]:
        """The names of the checks that do not pass now (empty: ready)."""
        failing = []
        for name, check in self._checks:
            try:
                passed = check()
            except Exception:  # e.g. a Redis error: not ready, whatever its kind
                passed = False
            if not passed:
                failing.append(name)
        return failing


def probe_client(settings: Settings) -> redis.Redis:
    """A Redis client of its own for `/readyz`, with short timeouts (never the tier's busy pool)."""
    return sync_client(
        settings,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        max_connections=2,
        client_name="brandbot-probe",
    )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the logs."""


def ops_app(registry: CollectorRegistry, readiness: Readiness) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _plain(start_response, "200 OK", "alive")
        if path == "/readyz":
            failing = readiness.failing()
            if failing:
                return _plain(start_response, "503 Service Unavailable", "not ready: " + ", ".join(failing))
            return _plain(start_response, "200 OK", "ready")
        return metrics(environ, start_response)

    return app


def _plain(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


class OpsServer:
    """The running server; `close()` stops it (a process that exits need not)."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_ops(settings: Settings, *, registry: CollectorRegistry, readiness: Readiness) -> OpsServer | None:
    """Serve `/metrics`, `/healthz` and `/readyz` when `BRANDBOT_METRICS_PORT` is set; None otherwise."""
    if not settings.metrics_port:
        return None
    try:
        server = make_server(
            settings.metrics_host,
            settings.metrics_port,
            ops_app(registry, readiness),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
    except OSError as error:
        raise BrandbotError(
            f"cannot serve metrics and health checks on {settings.metrics_host}:{settings.metrics_port} "
            f"(BRANDBOT_METRICS_HOST/PORT): {error.strerror or error}"
        ) from None
    return OpsServer(server)
