"""The one aiohttp server: platform webhooks, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.engine import Core

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_http_app(core: Core) -> web.Application:
    app = web.Application(client_max_size=25 * 1024 * 1024)

    async def healthz(request: web.Request) -> web.Response:
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
