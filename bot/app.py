"""Wiring: settings -> stores -> core -> adapters -> HTTP server, and orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from bot.config import Settings
from bot.http import HttpServer, build_http_app
from bot.stores import Stores, open_stores
from core.build import build
from core.config import CoreConfig
from core.engine import Core
from core.errors import FatalPlatformError
from core.media import MediaReader
from core.memory.embedder import make_embedder

log = logging.getLogger(__name__)


class RunnableAdapter(Protocol):
    name: str

    def routes(self) -> list[tuple[str, str, Any]]: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


def core_config(settings: Settings) -> CoreConfig:
    return CoreConfig(
        data_dir=settings.data_dir,
        model=settings.model,
        reasoning_model=settings.effective_reasoning_model,
        learning_model=settings.effective_learning_model,
        llm_api_base=settings.llm_api_base,
        llm_api_key=settings.llm_api_key,
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
        settings.embedding_model, settings.llm_api_base, settings.llm_api_key, cache_dir=settings.data_dir / "models"
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


def build_adapters(settings: Settings, core: Core) -> list[RunnableAdapter]:
    """One adapter per platform whose credentials are set (SDKs imported only when used)."""
    adapters: list[RunnableAdapter] = []
    if settings.telegram_bot_token:
        from adapters.telegram import TelegramAdapter

        adapters.append(
            TelegramAdapter(
                core,
                token=settings.telegram_bot_token,
                api_base=settings.telegram_api_base,
                webhook_url=settings.telegram_webhook_url,
                webhook_secret=settings.telegram_webhook_secret,
            )
        )
    if settings.discord_bot_token:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(core, token=settings.discord_bot_token, api_base=settings.discord_api_base))
    if settings.slack_bot_token:
        from adapters.slack import SlackAdapter

        adapters.append(
            SlackAdapter(
                core,
                bot_token=settings.slack_bot_token,
                app_token=settings.slack_app_token,
                signing_secret=settings.slack_signing_secret,
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
            # Drain: webhooks answer 503 from now on (the platform retries on another
            # worker), in-flight work gets MNEMO_DRAIN_SECONDS, the rest is handed back.
            http.draining = True
            stopper.cancel()
            for adapter in adapters:
                try:
                    await asyncio.wait_for(adapter.stop(), 15)
                except Exception:
                    log.exception("stopping %s failed", adapter.name)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            await core.drain(timeout=settings.drain_seconds)
            await http.stop()
            log.info("stopped")
        return exit_code
