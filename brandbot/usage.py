"""Usage counters for `brandbot usage`: what was asked, answered and spent, per day and group; never text.

Each tier counts what it alone knows, per UTC day and group (persona, platform, channel id, model):

- the worker (`engine` tier), once per finished generation: `generations`, `prompt_tokens`,
  `completion_tokens`, `busy_ms` (the request's generation time: from its submission to the engine to its
  last token, queue wait excluded) and a histogram of time to first token (`ttft_le_<ms>`), and, per
  model, the seconds it was up (`brandbot:usage:engine:<day>:uptime`);
- the front-end (`chat` tier): `questions` (queued for an answer), `answers` (finished answers shown),
  `errors` (an error shown instead of an answer) and a histogram of the time from the question's arrival
  to its final answer shown (`final_le_<ms>`).

One hash per tier, day and group (`brandbot:usage:<tier>:<day>:<platform>:<channel>:<persona>:<model>`),
listed in a set per tier and day (`brandbot:usage:<tier>:<day>`) so that reading needs no SCAN. Every
write is one pipeline that also sets each key's time to live to the usage retention: every key expires.
Histograms have fixed bucket bounds, so percentiles come from summed counters (no per-request records).

```python
recorder = UsageRecorder(connection, retention_days=settings.usage_retention_days)
recorder.record(ENGINE, group, generation_counts(usage))  # worker, sync client
await AsyncUsageRecorder(aconnection, retention_days=90).record(CHAT, group, {"questions": 1})
book = UsageBook(connection).read(days)  # `brandbot usage`
```
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
import redis.asyncio

from brandbot import keys
from brandbot.contract import Usage

ENGINE = "engine"
"""Tier of the counters workers write."""

CHAT = "chat"
"""Tier of the counters front-ends write."""

BUCKET_BOUNDS_MS: tuple[int, ...] = (
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 15_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000, 180_000, 300_000,
)  # fmt: skip
"""Upper bounds of the latency histogram buckets (ms); one more bucket (`inf`) takes the rest.

Fixed forever: counters of different days and processes add up only if their buckets are the same."""

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, order=True)
class UsageGroup:
    """What a count is about: ids and names only (a channel id is an identifier, never a message)."""

    platform: str
    channel: str
    persona: str
    model: str

    def parts(self) -> tuple[str, str, str, str]:
        return (self.platform, self.channel, self.persona, self.model)

    def member(self) -> str:
        return json.dumps(self.parts())

    @classmethod
    def from_member(cls, member: bytes | str) -> UsageGroup:
        platform, channel, persona, model = (str(part) for part in json.loads(member))
        return cls(platform=platform, channel=channel, persona=persona, model=model)

    @classmethod
    def from_record(cls, parts: object) -> UsageGroup | None:
        """The group an in-flight record carries (`parts()` as a list), None if it has none or a bad one."""
        if not isinstance(parts, list) or len(parts) != 4 or not all(isinstance(p, str) for p in parts):
            return None
        platform, channel, persona, model = parts
        return cls(platform=platform, channel=channel, persona=persona, model=model)


def utc_day(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def bucket_field(kind: str, ms: float) -> str:
    """The histogram field counting a latency of `ms` (`ttft_le_500`, …, `ttft_le_inf`)."""
    for bound in BUCKET_BOUNDS_MS:
        if ms <= bound:
            return f"{kind}_le_{bound}"
    return f"{kind}_le_inf"


def generation_counts(usage: Usage) -> dict[str, int]:
    """A worker's counters for one finished generation (its `done` event's usage)."""
    counts = {
        "generations": 1,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "busy_ms": round(usage.total_ms),
    }
    if usage.time_to_first_token_ms is not None:
        counts[bucket_field("ttft", usage.time_to_first_token_ms)] = 1
    return counts


def outcome_counts(*, answered: bool, final_ms: float | None = None) -> dict[str, int]:
    """A front-end's counters for one question's end: an answer shown (and how long it took), or an error."""
    if not answered:
        return {"errors": 1}
    counts = {"answers": 1}
    if final_ms is not None:
        counts[bucket_field("final", final_ms)] = 1
    return counts


def _stage(pipe: Any, tier: str, group: UsageGroup, counts: Mapping[str, int], ttl: int, day: str) -> None:
    """Queue one record's commands on a (sync or async) pipeline: counters, index, both keys' expiry."""
    counters, index = keys.usage_counters(tier, day, group.parts()), keys.usage_index(tier, day)
    for name, amount in counts.items():
        pipe.hincrby(counters, name, amount)
    pipe.expire(counters, ttl)
    pipe.sadd(index, group.member())
    pipe.expire(index, ttl)


class UsageRecorder:
    """Counts into Redis for one tier process (sync client: the worker). One pipeline per record."""

    def __init__(self, connection: redis.Redis, *, retention_days: int) -> None:
        self._redis = connection
        self._ttl = retention_days * SECONDS_PER_DAY

    def record(
        self, tier: str, group: UsageGroup, counts: Mapping[str, int], *, day: str | None = None
    ) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            _stage(pipe, tier, group, counts, self._ttl, day or utc_day())
            pipe.execute()

    def record_uptime(self, model: str, seconds: int, *, day: str | None = None) -> None:
        key = keys.usage_uptime(day or utc_day())
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, model, seconds)
            pipe.expire(key, self._ttl)
            pipe.execute()


class AsyncUsageRecorder:
    """The same for an asyncio process (the front-ends), as a group commit: counts recorded while a write is
    under way are summed per group and go out together in the next one. A burst of questions then costs a
    few transactions, not one per question; each caller still returns once its counts are in Redis."""

    def __init__(self, connection: redis.asyncio.Redis, *, retention_days: int) -> None:
        self._redis = connection
        self._ttl = retention_days * SECONDS_PER_DAY
        self._next: dict[tuple[str, UsageGroup, str], Counter[str]] = {}
        self._next_written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self, tier: str, group: UsageGroup, counts: Mapping[str, int], *, day: str | None = None
    ) -> None:
        self._next.setdefault((tier, group, day or utc_day()), Counter()).update(counts)
        if self._next_written is None:
            self._next_written = asyncio.get_running_loop().create_future()
        written = self._next_written
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_while_waiting(), name="brandbot-usage")
        await asyncio.shield(written)  # a caller that gives up does not cancel the others' write

    async def _write_while_waiting(self) -> None:
        try:
            while self._next_written is not None:
                await asyncio.sleep(0)  # counts of tasks made ready by the same events join this write
                batch, written = self._next, self._next_written
                self._next, self._next_written = {}, None
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        for (tier, group, day), counts in batch.items():
                            _stage(pipe, tier, group, counts, self._ttl, day)
                        await pipe.execute()
                except Exception as error:
                    _settle(written, error)
                except BaseException:
                    _settle(written, redis.ConnectionError("the front-end stopped before Redis answered"))
                    raise
                else:
                    written.set_result(None)
        finally:
            self._writer = None
            if self._next_written is not None:  # stopped with counts waiting: their callers are told
                _settle(self._next_written, redis.ConnectionError("usage writer stopped"))
                self._next, self._next_written = {}, None


def _settle(written: asyncio.Future[None], error: Exception) -> None:
    written.set_exception(error)
    written.exception()  # marked retrieved: a caller that gave up must not leave it unretrieved


class UptimeClock:
    """A worker's time up, written every `flush_seconds` (and at stop) to the day it was spent in."""

    def __init__(
        self, recorder: UsageRecorder, *, model: str, clock: Callable[[], float], flush_seconds: float = 60.0
    ) -> None:
        self._recorder = recorder
        self._model = model
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._since = clock()
        self._unwritten = 0.0

    def tick(self) -> None:
        self._advance()
        if self._unwritten >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the whole seconds counted so far (a Redis error keeps them for the next try)."""
        self._advance()
        whole = math.floor(self._unwritten)
        if whole > 0:
            self._recorder.record_uptime(self._model, whole)
            self._unwritten -= whole

    def _advance(self) -> None:
        now = self._clock()
        self._unwritten += now - self._since
        self._since = now


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Counters:
    """Counters of one day and group, both tiers' fields together, summed over whatever was merged."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, other: Mapping[str, int]) -> None:
        for name, amount in other.items():
            self.values[name] = self.values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def percentile_ms(self, kind: str, quantile: float) -> float | None:
        return histogram_percentile(
            [self[f"{kind}_le_{bound}"] for bound in BUCKET_BOUNDS_MS] + [self[f"{kind}_le_inf"]], quantile
        )


def histogram_percentile(counts: list[int], quantile: float) -> float | None:
    """The `quantile` of a fixed-bucket histogram (counts per `BUCKET_BOUNDS_MS` bucket, then `inf`).

    Linear within the bucket it falls in, as Prometheus' `histogram_quantile`; past the last bound the
    last bound is returned (the figure is then a floor). None without any observation.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = quantile * total
    seen = 0
    lower = 0.0
    for index, count in enumerate(counts):
        if index == len(BUCKET_BOUNDS_MS):
            return float(BUCKET_BOUNDS_MS[-1])
        upper = float(BUCKET_BOUNDS_MS[index])
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return float(BUCKET_BOUNDS_MS[-1])


@dataclass(frozen=True)
class UsageEntry:
    day: str
    group: UsageGroup
    counters: Counters


def last_days(count: int, today: date | None = None) -> list[str]:
    """The `count` UTC days up to today, oldest first."""
    end = today or datetime.now(UTC).date()
    return [(end - timedelta(days=back)).isoformat() for back in reversed(range(count))]


class UsageBook:
    """Reads the counters back (`brandbot usage`): the day indexes, then every listed hash, no SCAN."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    def read(self, days: Iterable[str]) -> list[UsageEntry]:
        entries = []
        for day in days:
            groups: dict[UsageGroup, Counters] = {}
            for tier in (ENGINE, CHAT):
                members: Any = self._redis.smembers(keys.usage_index(tier, day))
                listed = sorted(UsageGroup.from_member(member) for member in members)
                with self._redis.pipeline(transaction=False) as pipe:
                    for group in listed:
                        pipe.hgetall(keys.usage_counters(tier, day, group.parts()))
                    hashes = pipe.execute()
                for group, values in zip(listed, hashes, strict=True):
                    counted = {keys.as_text(name): int(amount) for name, amount in values.items()}
                    groups.setdefault(group, Counters()).add(counted)
            entries += [UsageEntry(day, group, groups[group]) for group in sorted(groups)]
        return entries

    def uptime(self, days: Iterable[str]) -> dict[str, dict[str, int]]:
        """Seconds up per day and model."""
        found = {}
        for day in days:
            values: Any = self._redis.hgetall(keys.usage_uptime(day))
            if values:
                found[day] = {keys.as_text(model): int(seconds) for model, seconds in values.items()}
        return found
