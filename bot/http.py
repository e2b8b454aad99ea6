"""The one aiohttp server: platform webhooks, /healthz and /metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.engine import Core
from core.store.monitoring import COMMANDS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OPS_PATHS = ("/healthz", "/metrics")
# Platform webhooks: the headers that prove the sender before its body is read, and a body cap
# (Slack events and Telegram updates are a few KB; 1 MB is ample). An unsigned or oversized
# post is refused without reading it, so big bodies cannot pile up in memory.
WEBHOOK_MAX_BYTES = 1024 * 1024
_WEBHOOK_HEADERS = {
    "/slack/events": ("X-Slack-Signature", "X-Slack-Request-Timestamp"),
    "/telegram/webhook": ("X-Telegram-Bot-Api-Secret-Token",),
}
_SLACK_MAX_SKEW_S = 300
# A dict under a typed key: the app is frozen once started, the dict's contents are not.
STATE = web.AppKey("state", dict)


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    """During shutdown, platform webhooks get 503: the platform retries, and a load balancer
    sends the retry to a worker that is still serving. /healthz and /metrics keep answering."""
    if request.app[STATE]["draining"] and request.path not in _OPS_PATHS:
        return web.json_response({"error": "shutting down"}, status=503, headers={"Retry-After": "5"})
    return await handler(request)


@web.middleware
async def guard_webhooks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers first, then size: refused before a byte of the body is read. The handler gets
    a request whose body reads stop at WEBHOOK_MAX_BYTES (413), chunked uploads included."""
    required = _WEBHOOK_HEADERS.get(request.path)
    if required is None or request.method != "POST":
        return await handler(request)
    if not all(request.headers.get(name) for name in required):
        return web.json_response({"error": "not signed"}, status=401)
    stamp = request.headers.get("X-Slack-Request-Timestamp")
    if stamp is not None and not (stamp.isdigit() and abs(time.time() - int(stamp)) <= _SLACK_MAX_SKEW_S):
        return web.json_response({"error": "stale or bad timestamp"}, status=401)
    if request.content_length is not None and request.content_length > WEBHOOK_MAX_BYTES:
        return web.json_response({"error": "body too large"}, status=413)
    return await handler(request.clone(client_max_size=WEBHOOK_MAX_BYTES))


def build_http_app(core: Core) -> web.Application:
    app = web.Application(client_max_size=25 * 1024 * 1024, middlewares=[refuse_while_draining, guard_webhooks])
    app[STATE] = {"draining": False}

    async def healthz(request: web.Request) -> web.Response:
        if app[STATE]["draining"]:
            return web.json_response({"status": "draining"}, status=503)
        checks = await core.health()
        healthy = all(v == "ok" for v in checks.values())
        return web.json_response({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)

    async def metrics(request: web.Request) -> web.Response:
        core.metrics.gauge("mnemo_queue_depth", core.pending_jobs)
        for command, count in COMMANDS.counts().items():  # sent since the process started
            core.metrics.gauge("mnemo_mongodb_commands", count, command=command)
        return web.Response(text=core.metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def draining(self) -> bool:
        return bool(self.app[STATE]["draining"])

    @draining.setter
    def draining(self, value: bool) -> None:
        self.app[STATE]["draining"] = value

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, path, handler)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else self.port  # port 0: the one the system chose
        log.info("HTTP server on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
