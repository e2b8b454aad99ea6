"""Wiring: settings -> stores -> core -> adapters -> HTTP server, and orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.config import Settings, reveal
from bot.http import HttpServer, build_http_app
from bot.stores import Stores, open_stores
from core.build import build
from core.config import CoreConfig
from core.engine import Core
from core.errors import FatalPlatformError
from core.media import MediaReader
from core.memory.embedder import make_embedder
from core.platform import Adapter

log = logging.getLogger(__name__)

# SIGTERM to exit: stop intake + drain + close within this, leaving the rest of the 25 s
# a SIGTERM may take (issue 14) to closing the core and the stores.
SHUTDOWN_BUDGET_S = 20.0
STOP_INTAKE_S = 5.0  # each adapter's stop_intake() returns well within this
CLOSE_S = 4.0  # kept for closing every adapter after the drain


def core_config(settings: Settings) -> CoreConfig:
    return CoreConfig(
        data_dir=settings.data_dir,
        model=settings.model,
        reasoning_model=settings.effective_reasoning_model,
        learning_model=settings.effective_learning_model,
        llm_api_base=settings.llm_api_base,
        llm_api_key=reveal(settings.llm_api_key),
        llm_timeout_s=settings.llm_timeout_s,
        stt_model=settings.stt_model,
        vision_model=settings.vision_model,
        max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        max_audio_seconds=settings.max_audio_minutes * 60,
        lease_seconds=settings.lease_seconds,
        public_url=settings.public_url,
    )


@asynccontextmanager
async def open_core(settings: Settings, background: bool = True) -> AsyncIterator[Core]:
    """Stores and core, opened together and closed in reverse order."""
    embedder = make_embedder(
        settings.embedding_model, settings.llm_api_base, reveal(settings.llm_api_key), cache_dir=settings.data_dir / "models"
    )
    # Load the embedding model while the stores start (it takes seconds on a CPU), so neither
    # start-up nor the first message pays for the two one after the other.
    preload = getattr(embedder, "preload", None)
    warming = asyncio.create_task(preload()) if preload is not None else None
    try:
        stores: Stores = await open_stores(settings)
    except BaseException:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        raise
    config = core_config(settings)
    core = build(config, stores.mongo, stores.chroma, embedder, db_name=settings.mongodb_db, media=MediaReader(config))
    try:
        await core.start(background=background)
        if warming is not None:
            await warming
        yield core
    finally:
        await core.close()
        await stores.close()


def build_adapters(settings: Settings, core: Core) -> list[Adapter]:
    """One adapter per platform whose credentials are set (SDKs imported only when used)."""
    adapters: list[Adapter] = []
    if settings.telegram_bot_token:
        from adapters.telegram import TelegramAdapter

        adapters.append(
            TelegramAdapter(
                core,
                token=settings.telegram_bot_token.get_secret_value(),
                api_base=settings.telegram_api_base,
                webhook_url=settings.telegram_webhook_url,
                webhook_secret=reveal(settings.telegram_webhook_secret),
            )
        )
    if settings.discord_bot_token:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(core, token=settings.discord_bot_token.get_secret_value(), api_base=settings.discord_api_base))
    if settings.slack_bot_token:
        from adapters.slack import SlackAdapter

        adapters.append(
            SlackAdapter(
                core,
                bot_token=settings.slack_bot_token.get_secret_value(),
                app_token=reveal(settings.slack_app_token),
                signing_secret=reveal(settings.slack_signing_secret),
                api_base=settings.slack_api_base,
            )
        )
    if settings.public_url:  # the web dashboard, where /dashboard links lead
        from adapters.web import WebAdapter

        adapters.append(WebAdapter(core))
    return adapters


async def run_platforms(settings: Settings) -> int:
    """`mnemo run`: serve every configured platform until SIGTERM/SIGINT. Returns the exit code."""
    async with open_core(settings) as core:
        adapters = build_adapters(settings, core)
        for adapter in adapters:
            core.register(adapter)  # type: ignore[arg-type]
        http = HttpServer(build_http_app(core), settings.http_host, settings.http_port)
        for adapter in adapters:
            for method, path, handler in adapter.routes():
                http.add_route(method, path, handler)
        await http.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = {asyncio.create_task(adapter.run(), name=f"adapter:{adapter.name}") for adapter in adapters}
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        exit_code = 0
        try:
            pending = set(tasks) | {stopper}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    log.info("shutting down: draining")
                    break
                for task in done:
                    error = task.exception()
                    if isinstance(error, FatalPlatformError):
                        log.error("%s", error)
                        print(f"mnemo: {error}", file=__import__("sys").stderr)
                        exit_code = 1
                        stop.set()
                    elif error is not None:
                        log.error("adapter %s stopped: %r", task.get_name(), error)
                        exit_code = 1
                        stop.set()
                if exit_code:
                    break
        finally:
            stopper.cancel()
            await shut_down(adapters, tasks | {stopper}, core, http, settings.drain_seconds)
        return exit_code


async def shut_down(adapters: list[Adapter], tasks: set[asyncio.Task[Any]], core: Core, http: HttpServer,
                    drain_seconds: float) -> None:
    """Stop intake on every adapter at once, drain the core (in-flight replies still go out;
    the rest is handed back to another worker), then close every adapter at once: all within
    SHUTDOWN_BUDGET_S, whatever state a platform is in (a platform still retrying its first
    connection stops at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_BUDGET_S
    http.draining = True  # webhooks answer 503 from now on: the platform retries elsewhere
    await _on_every(adapters, "stop_intake", STOP_INTAKE_S)
    _, running = await asyncio.wait(tasks, timeout=1.0) if tasks else (set(), set())
    # The core's drain waits up to its timeout twice (replies in flight, then learning), and is
    # never cut short: what it cannot finish it hands back to another worker at its end.
    drain_for = max(0.0, deadline - CLOSE_S - loop.time())
    await core.drain(timeout=min(drain_seconds, drain_for / 2))
    await _on_every(adapters, "close", max(1.0, deadline - loop.time()))
    for task in running:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await http.stop()
    log.info("stopped")


async def _on_every(adapters: list[Adapter], step: str, timeout: float) -> None:
    """`adapter.<step>()` on every adapter at once, each bounded by `timeout`."""

    async def one(adapter: Adapter) -> None:
        try:
            await asyncio.wait_for(getattr(adapter, step)(), timeout)
        except TimeoutError:
            log.warning("%s: %s did not finish within %.0fs", adapter.name, step, timeout)
        except Exception:
            log.exception("%s: %s failed", adapter.name, step)

    await asyncio.gather(*(one(adapter) for adapter in adapters))
