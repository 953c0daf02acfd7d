"""The HTTP Events API transport: Slack POSTs signed events and button clicks to one URL.

The same bolt app serves both transports. Bolt checks each request's `X-Slack-Signature` (HMAC of the
body with the signing secret) and refuses timestamps more than five minutes away from now (replays),
answers `url_verification` with its challenge, and acks before the listeners run, well inside
Slack's 3 seconds. Slack's retries (`X-Slack-Retry-Num`) reach the listeners and are de-duplicated there.
"""

from __future__ import annotations

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from brandbot.logs import get_logger

log = get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Slack's payloads are far smaller; anything bigger is not from Slack."""

HEALTH_PATH = "/healthz"


def events_web_app(app: AsyncApp, *, path: str) -> web.Application:
    """An aiohttp application: `POST path` for Slack, `GET /healthz` for load balancers."""

    async def events(request: web.Request) -> web.Response:
        bolt_response = await app.async_dispatch(await to_bolt_request(request))
        if bolt_response.status == 401:
            log.warning("slack request refused: bad signature or stale timestamp")
        return await to_aiohttp_response(bolt_response)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    web_app = web.Application(client_max_size=MAX_BODY_BYTES)
    web_app.router.add_post(path, events)
    web_app.router.add_get(HEALTH_PATH, health)
    return web_app


async def serve_http(app: AsyncApp, *, host: str, port: int, path: str) -> web.AppRunner:
    """Start listening; the caller cleans the returned runner up."""
    runner = web.AppRunner(events_web_app(app, path=path), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("slack http endpoint listening", host=host, port=port, path=path)
    return runner
