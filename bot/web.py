"""`mnemo web`: the same pipeline in a browser, on the embedded defaults, for the local operator."""

from __future__ import annotations

import asyncio
import getpass
import signal
import sys

from bot.config import Settings
from bot.http import HttpServer, build_http_app

HOST = "127.0.0.1"


def operator_name() -> str:
    try:
        return getpass.getuser() or "operator"
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "operator"


async def run_web(settings: Settings, port: int) -> int:
    from adapters.web import WebAdapter
    from bot.app import open_core
    from core.web_links import LINK_TTL

    local_url = f"http://{HOST}:{port}"
    if not settings.public_url:
        settings = settings.model_copy(update={"public_url": local_url})  # /dashboard in the web chat links here
    async with open_core(settings) as core:
        adapter = WebAdapter(core)
        core.register(adapter)
        http = HttpServer(build_http_app(core), HOST, port)
        for method, path, handler in adapter.routes():
            http.add_route(method, path, handler)
        await adapter.ensure_indexes()
        try:
            await http.start()
        except OSError as exc:
            print(f"mnemo: cannot serve on {HOST}:{port} ({exc.strerror}); choose another with --port",
                  file=sys.stderr)
            return 1
        name = operator_name()
        link = await core.web_logins.create_link(
            "web", name, name, operator=True, dm_conversation=f"web:dm-{name}", base_url=local_url
        )
        minutes = int(LINK_TTL.total_seconds() // 60)
        print(f"Mnemo web is running on {local_url}/\n"
              f"Log in (one-time link, valid for {minutes} minutes): {link}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            http.draining = True
            await adapter.stop()
            await core.drain(timeout=settings.drain_seconds)
            await http.stop()
    return 0
