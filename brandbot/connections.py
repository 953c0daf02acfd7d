"""Every Redis connection brandbot opens is built here, from settings: users, TLS and Sentinel in one place.

- `BRANDBOT_REDIS_URL` carries the ACL user and password (`redis://worker:<password>@redis:6379/0`) and
  the scheme: `rediss://` is TLS, with the CA, client certificate and hostname check of the
  `BRANDBOT_REDIS_TLS_*` settings.
- With `BRANDBOT_REDIS_SENTINELS` set, the master is asked of the sentinels (and asked again after a
  failover); the URL then gives only user, password, database and scheme. A `rediss://` URL makes the
  sentinel connections TLS too, with the same certificates. A command that meets a dead master is
  sent again on a new connection, which waits through the sentinels for up to
  `BRANDBOT_REDIS_FAILOVER_WAIT_SECONDS` for the next master, so a failover looks like a slow command
  to every caller rather than an outage. Without Sentinel there is no other master to wait for, and a
  lost Redis is reported at once, as before.

```python
client = sync_client(settings, socket_timeout=5)  # redis.Redis, for RQ and blocking work
aclient = async_client(settings, max_connections=64)  # redis.asyncio.Redis, for the front-ends
```
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.connection
import redis.retry
import redis.sentinel
from redis.backoff import ConstantBackoff
from redis.connection import parse_url

from brandbot.settings import Settings

SENTINEL_TIMEOUT_SECONDS = 2.0
"""A sentinel that does not answer within this time is skipped for the next one."""

FAILOVER_RETRY_INTERVAL_SECONDS = 0.5
"""While no master answers, a reconnection asks the sentinels again this often."""

COMMAND_RETRIES = 2
"""A command whose connection broke is sent again this many times, each on a fresh connection (which
itself waits up to `BRANDBOT_REDIS_FAILOVER_WAIT_SECONDS` for a master): a bounded wait in all."""

WORKER_CONNECT_TIMEOUT_SECONDS = 5.0
WORKER_HEALTH_CHECK_SECONDS = 15
"""An idle worker connection is pinged before reuse after this long (a failover or a restart drops it)."""


REDIS_OUTAGE = (
    redis.ConnectionError,  # down or restarting (includes LOADING: still reading its append-only file)
    redis.TimeoutError,  # silent: a partition
    redis.exceptions.OutOfMemoryError,  # full (maxmemory with noeviction)
    redis.exceptions.ReadOnlyError,  # a failed-over primary that is now a replica
    redis.exceptions.ClusterDownError,  # includes MASTERDOWN
    redis.exceptions.TryAgainError,
)
"""Errors that mean "Redis cannot serve us right now", as opposed to a bug in a command: every tier rides
these out for a while (front-ends' intake and relays, the worker's replies)."""


def sync_client(settings: Settings, *, pool_wait_seconds: float | None = None, **options: Any) -> redis.Redis:
    """A blocking client; `options` are redis-py pool and connection options (timeouts, pool size).

    `pool_wait_seconds`: a full pool makes a command wait this long for a free connection instead of failing
    at once (a bounded pool under a burst). Sentinel pools cannot wait: with Sentinel the pool is unbounded.
    """
    if settings.redis_sentinels:
        if pool_wait_seconds is not None:
            options.pop("max_connections", None)
        sentinel = redis.sentinel.Sentinel(
            _sentinel_addresses(settings),
            sentinel_kwargs=_sentinel_options(settings),
            **_master_options(settings),
        )
        return sentinel.master_for(
            settings.redis_sentinel_master,
            redis_class=redis.Redis,
            connection_class=_SentinelSSLConnection if uses_tls(settings) else _SentinelConnection,
            failover_wait_seconds=settings.redis_failover_wait_seconds,
            **{"retry": redis.retry.Retry(ConstantBackoff(FAILOVER_RETRY_INTERVAL_SECONDS), COMMAND_RETRIES)}
            | options,
        )
    if pool_wait_seconds is not None:
        return redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                settings.redis_url, timeout=pool_wait_seconds, **_tls_options(settings), **options
            )
        )
    return redis.Redis.from_url(settings.redis_url, **_tls_options(settings), **options)


def async_client(
    settings: Settings, *, pool_wait_seconds: float | None = None, **options: Any
) -> redis.asyncio.Redis:
    """The asyncio twin of `sync_client`, for the front-ends' event loops."""
    if settings.redis_sentinels:
        if pool_wait_seconds is not None:
            options.pop("max_connections", None)
        sentinel = redis.asyncio.sentinel.Sentinel(
            _sentinel_addresses(settings),
            sentinel_kwargs=_sentinel_options(settings),
            **_master_options(settings),
        )
        return sentinel.master_for(
            settings.redis_sentinel_master,
            redis_class=redis.asyncio.Redis,
            connection_class=_AsyncSentinelSSLConnection if uses_tls(settings) else _AsyncSentinelConnection,
            retry=redis.asyncio.retry.Retry(
                ConstantBackoff(FAILOVER_RETRY_INTERVAL_SECONDS), COMMAND_RETRIES
            ),
            failover_wait_seconds=settings.redis_failover_wait_seconds,
            **options,
        )
    if pool_wait_seconds is not None:
        return redis.asyncio.Redis.from_pool(
            redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis_url, timeout=pool_wait_seconds, **_tls_options(settings), **options
            )
        )
    return redis.asyncio.Redis.from_url(settings.redis_url, **_tls_options(settings), **options)


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A Sentinel-managed connection that waits out a failover and reconnects to the new master.

    - `connect()` asks the sentinels for the master until one answers, for up to `failover_wait_seconds`
      (the sentinels name the dead master until they have elected another).
    - redis-py 8.1 asks the sentinels only in `connect()`; a connection that broke mid-command is
      reopened by `send_packed_command` through `connect_check_health()`, straight to the address it
      had: the dead master. Going through `connect()` there asks the sentinels again.
    """

    def __init__(self, *, failover_wait_seconds: float, **kwargs: Any) -> None:
        self.failover_wait_seconds = failover_wait_seconds
        super().__init__(**kwargs)

    def connect(self) -> None:
        deadline = time.monotonic() + self.failover_wait_seconds
        while True:
            try:
                return self._connect_retry()
            except redis.ConnectionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(FAILOVER_RETRY_INTERVAL_SECONDS)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


class _SentinelSSLConnection(_SentinelConnection, redis.connection.SSLConnection):
    pass


class _AsyncSentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """The asyncio twin of `_SentinelConnection`."""

    def __init__(self, *, failover_wait_seconds: float, **kwargs: Any) -> None:
        self.failover_wait_seconds = failover_wait_seconds
        super().__init__(**kwargs)

    async def connect(self) -> None:
        deadline = time.monotonic() + self.failover_wait_seconds
        while True:
            try:
                return await self._connect_retry()
            except redis.ConnectionError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(FAILOVER_RETRY_INTERVAL_SECONDS)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(command, check_health)


class _AsyncSentinelSSLConnection(_AsyncSentinelConnection, redis.asyncio.connection.SSLConnection):
    pass


def worker_connection(settings: Settings, **options: Any) -> redis.Redis:
    """The connection a worker's RQ job slots share (RQ takes any `redis.Redis`, Sentinel-managed too)."""
    return sync_client(
        settings,
        socket_connect_timeout=WORKER_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=WORKER_HEALTH_CHECK_SECONDS,
        **options,
    )


def uses_tls(settings: Settings) -> bool:
    return settings.redis_url.startswith("rediss://")


def _tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's `ssl_*` options; the server's certificate is always checked against a CA."""
    if not uses_tls(settings):
        return {}

    def path(value: object) -> str | None:
        return None if value is None else str(value)

    return {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": path(settings.redis_tls_ca_file),
        "ssl_certfile": path(settings.redis_tls_cert_file),
        "ssl_keyfile": path(settings.redis_tls_key_file),
        "ssl_check_hostname": settings.redis_tls_check_hostname,
    }


def _master_options(settings: Settings) -> dict[str, Any]:
    """User, password, database and TLS of the master (and replicas) found through the sentinels."""
    url = parse_url(settings.redis_url)
    options = {name: url[name] for name in ("username", "password", "db") if name in url}
    if uses_tls(settings):
        options |= {"ssl": True, **_tls_options(settings)}
    return options


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    password = settings.redis_sentinel_password
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "password": password.get_secret_value() if password is not None else None,
    }
    if uses_tls(settings):
        options |= {"ssl": True, **_tls_options(settings)}
    return options


def _sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    addresses = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))  # "[::1]:26379" is an IPv6 sentinel
    return addresses
