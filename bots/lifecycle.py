"""How a front-end process stops: SIGTERM (docker stop, Kubernetes, PID 1) and Ctrl-C end it alike.

The signal does not cancel the main task (that would surface as a `CancelledError` traceback): it ends
serving, and the caller's clean-up then runs as on any return — questions being taken in are finished,
leases released — and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any

from brandbot.logs import get_logger

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve_until_signalled(serve: Coroutine[Any, Any, object]) -> None:
    """Run `serve` until it returns or a stop signal arrives; in the latter case cancel it and return.

    An error `serve` raises is raised here (e.g. a token the platform rejects).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for stop_signal in STOP_SIGNALS:
        loop.add_signal_handler(stop_signal, stop.set)
    serving = asyncio.create_task(serve)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("stop signal received, stopping")
    finally:
        for stop_signal in STOP_SIGNALS:
            loop.remove_signal_handler(stop_signal)
        stopping.cancel()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
