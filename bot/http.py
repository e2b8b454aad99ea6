"""The one aiohttp server: platform webhooks, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.engine import Core

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OPS_PATHS = ("/healthz", "/metrics")
# A dict under a typed key: the app is frozen once started, the dict's contents are not.
STATE = web.AppKey("state", dict)


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    """During shutdown, platform webhooks get 503: the platform retries, and a load balancer
    sends the retry to a worker that is still serving. /healthz and /metrics keep answering."""
    if request.app[STATE]["draining"] and request.path not in _OPS_PATHS:
        return web.json_response({"error": "shutting down"}, status=503, headers={"Retry-After": "5"})
    return await handler(request)


def build_http_app(core: Core) -> web.Application:
    app = web.Application(client_max_size=25 * 1024 * 1024, middlewares=[refuse_while_draining])
    app[STATE] = {"draining": False}

    async def healthz(request: web.Request) -> web.Response:
        if app[STATE]["draining"]:
            return web.json_response({"status": "draining"}, status=503)
        checks = {}
        try:
            await asyncio.wait_for(core.store.ping(), 5)
            checks["mongodb"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["mongodb"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(asyncio.to_thread(core.index.chroma.heartbeat), 5)
            checks["chroma"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["chroma"] = f"error: {type(exc).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return web.json_response({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)

    async def metrics(request: web.Request) -> web.Response:
        core.metrics.gauge("mnemo_queue_depth", core.runner.pending)
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
        log.info("HTTP server on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
