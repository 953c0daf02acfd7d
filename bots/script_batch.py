"""Group commit for the front-end's Lua scripts: calls made while one pipeline is under way go to Redis
together in the next one.

Every question's intake runs two scripts (mark it seen and record it; its asker's rate limit). A burst of
hundreds of mentions would otherwise be hundreds of round trips, each waiting for a connection of the
pool and costing the event loop a command's worth of parsing; batched, it is a few pipelines. A lone
call waits for nothing but one turn of the event loop.

```python
scripts = ScriptBatcher(connection)
taken = await scripts.call(take_script, keys=[...], args=[...])  # an ordinary script's reply
```
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

MAX_BATCH = 256
"""Calls per pipeline at most; more wait for the next one."""


@dataclass
class _Call:
    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


class ScriptBatcher:
    """Runs Lua scripts for many tasks at once, one pipeline (not a transaction) per batch."""

    def __init__(self, connection: redis.asyncio.Redis, *, max_batch: int = MAX_BATCH) -> None:
        self._redis = connection
        self._max_batch = max_batch
        self._waiting: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, script: AsyncScript, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """`script`'s reply, as `await script(keys, args)` would give it; Redis errors are raised here."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(script, keys, args, reply))
        if self._flusher is None:
            # Lives only while calls wait, so nothing is left running when the front-end stops.
            self._flusher = asyncio.create_task(self._flush(), name="brandbot-scripts")
        return await reply

    async def _flush(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # tasks made ready by the same events add their calls first
                batch = self._waiting[: self._max_batch]
                del self._waiting[: len(batch)]
                await self._run(batch)
        finally:
            self._flusher = None

    async def _run(self, batch: list[_Call]) -> None:
        pending = [call for call in batch if not call.reply.done()]  # a caller that gave up is skipped
        try:
            replies = await self._execute(pending)
            unknown = {id(c.script): c.script for c, r in zip(pending, replies, strict=True) if _no_script(r)}
            if unknown:
                # A restarted Redis forgot its scripts: load them, then run again what it could not.
                for script in unknown.values():
                    script.sha = await self._redis.script_load(script.script)
                again = [i for i, reply in enumerate(replies) if _no_script(reply)]
                for index, reply in zip(again, await self._execute([pending[i] for i in again]), strict=True):
                    replies[index] = reply
        except Exception as error:
            _fail(pending, error)
            return
        except BaseException:
            _fail(pending, RedisConnectionError("the front-end stopped before Redis answered"))
            raise
        for call, reply in zip(pending, replies, strict=True):
            if call.reply.done():
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))


def _fail(calls: list[_Call], error: Exception) -> None:
    for call in calls:
        if not call.reply.done():
            call.reply.set_exception(error)


def _no_script(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)
