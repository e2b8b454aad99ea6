"""A discord.py Client that talks to a configurable REST base and to the gateway URL that
`GET /gateway/bot` on that base returns (DESIGN.md: `DISCORD_API_BASE`)."""

from __future__ import annotations

import logging
from typing import Protocol

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket

from core.outbound import retry

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"
MAX_RATE_LIMIT_WAIT_S = 120.0
INTENTS = discord.Intents(guilds=True, guild_messages=True, dm_messages=True, message_content=True)
# What the bot needs in a guild: see channels, answer (also in threads), reply to a message
# (a reply needs Read Message History). Private answers go to interactions or DMs.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)


def use_api_base(api_base: str) -> None:
    """Point every REST call at `api_base`.

    discord.py builds each URL, bot calls and interaction webhooks alike, from the class
    attribute `Route.BASE` (its own `_set_api_version` changes it the same way), so the base
    is process-wide: one Discord bot per process, which is how Mnemo runs."""
    discord.http.Route.BASE = api_base.rstrip("/")


class Listener(Protocol):
    async def on_message(self, message: discord.Message) -> None: ...

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None: ...


class MnemoClient(discord.Client):
    """discord.Client whose websocket goes to the URL `GET /gateway/bot` returned.

    A plain Client dials the hard-coded `wss://gateway.discord.gg/` for every fresh IDENTIFY
    (resumes use READY's `resume_gateway_url`). discord.py reads that default from
    `DiscordWebSocket.DEFAULT_GATEWAY`, so discovery sets it before connecting."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        # Mnemo never joins voice: skip discord.py's start-up warnings about voice libraries.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        # discord.py waits out 429s itself; one that would outlast the limit fails the send
        # (reported) instead of holding the conversation's queue behind it.
        super().__init__(intents=INTENTS, chunk_guilds_at_startup=False, max_messages=1000,
                         max_ratelimit_timeout=MAX_RATE_LIMIT_WAIT_S)
        self.tree = discord.app_commands.CommandTree(self)

    async def on_message(self, message: discord.Message) -> None:
        await self.listener.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self.listener.on_raw_message_edit(payload)

    async def setup_hook(self) -> None:
        # Global bulk overwrite (PUT /applications/{id}/commands): the registered set always
        # equals the code's. A failure leaves the previous registration in place; not fatal.
        if self.application_id is not None:
            invite = discord.utils.oauth_url(
                self.application_id, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
            )
            log.info("discord: invite the bot with %s", invite)
        try:
            synced = await self.tree.sync()
            log.info("discord: registered %d application commands", len(synced))
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("discord: could not register application commands: %s", exc)

    async def discover_gateway(self) -> yarl.URL:
        _shards, url, _limits = await retry(
            self.http.get_bot_gateway, what="discord: GET /gateway/bot failed", logger=log, cap_s=60,
            explain=str, transient=lambda exc: isinstance(exc, (discord.GatewayNotFound, aiohttp.ClientError, OSError))
            and not self.is_closed(),
        )
        return yarl.URL(url)

    async def connect(self, *, reconnect: bool = True) -> None:
        gateway = await self.discover_gateway()
        log.info("discord: gateway %s", gateway)
        DiscordWebSocket.DEFAULT_GATEWAY = gateway
        await super().connect(reconnect=reconnect)
