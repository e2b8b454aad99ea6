"""The Discord platform: gateway events in (inbound.Intake), threaded replies out
(outbound.Outbound). This module is the wiring and the lifecycle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager

import aiohttp
import discord

from adapters.discord.client import DEFAULT_API_BASE, MnemoClient, use_api_base
from adapters.discord.commands import register_commands
from adapters.discord.inbound import Intake
from adapters.discord.outbound import MAX_CHARS, Outbound, nonce_for
from core.errors import FatalPlatformError
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, Limits, Stopped, retry
from core.platform import CorePort, Route
from core.streaming import LiveTarget

__all__ = ["DiscordAdapter", "nonce_for"]

log = logging.getLogger(__name__)

INTENT_HELP = (
    "Discord refused the Message Content intent (gateway close code 4014). In the Discord Developer "
    "Portal (https://discord.com/developers/applications) open your application -> Bot -> Privileged "
    "Gateway Intents, turn on \"Message Content Intent\", save, and start mnemo again."
)
TOKEN_HELP = (
    "Discord rejected DISCORD_BOT_TOKEN. In the Discord Developer Portal open your application -> Bot -> "
    "Reset Token, and set DISCORD_BOT_TOKEN to the new token."
)
_UNREACHABLE = (aiohttp.ClientError, OSError, discord.DiscordServerError)


class DiscordAdapter:
    name = "discord"
    limits = PlatformLimits(max_message_chars=MAX_CHARS)
    fences_sends = True  # every create goes through the pacer, which fences right before the call
    checks_posted = True  # nonces: a resend after a crash returns the message already created

    def __init__(self, core: CorePort, token: str, api_base: str = DEFAULT_API_BASE) -> None:
        self.core = core
        self.token = token
        use_api_base(api_base)
        self.client = MnemoClient(listener=self)
        self.intake = Intake(core, self.client)
        register_commands(self.client.tree, self.intake.on_command)
        # One governor per channel for sends, edits and typing (discord.py adds its buckets).
        self.pacer = KeyedPacer(Limits(interval_s=1.0))
        self.outbound = Outbound(self.client, self.pacer)
        self._stopping = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return []  # everything arrives over the gateway

    async def run(self) -> None:
        try:
            await self._login()
            if self._stopping.is_set():
                return
            await self.client.connect(reconnect=True)
        except Stopped:
            return
        except discord.PrivilegedIntentsRequired:
            raise FatalPlatformError(INTENT_HELP) from None
        except discord.LoginFailure:
            raise FatalPlatformError(TOKEN_HELP) from None
        except discord.ConnectionClosed as exc:
            if exc.code == 4004:
                raise FatalPlatformError(TOKEN_HELP) from None
            raise FatalPlatformError(
                f"Discord closed the gateway with code {exc.code} ({exc.reason or 'no reason given'})."
            ) from None
        finally:
            if not self.client.is_closed():
                await self.client.close()

    async def _login(self) -> None:
        """Log in, retrying with backoff while Discord is unreachable (one line per attempt)."""

        async def login() -> None:
            try:
                await self.client.login(self.token)
            except _UNREACHABLE:
                # Closing the HTTP session closes its connector too, and discord.py reuses the
                # connector on the next login ("Session is closed"): drop it for a fresh one.
                await self.client.http.close()
                self.client.http.connector = discord.utils.MISSING
                raise

        await retry(login, what="discord: cannot reach the API", logger=log, stopping=self._stopping, cap_s=60,
                    transient=lambda exc: isinstance(exc, _UNREACHABLE))

    async def stop_intake(self) -> None:
        """Stops a login still retrying. The gateway stays up until close(): replies in flight
        need the client, and what arrives meanwhile is stored and handed back by the drain
        (the gateway never delivers an event twice, so refusing it would lose it)."""
        self._stopping.set()

    async def close(self) -> None:
        await self.client.close()

    async def stop(self) -> None:
        """All three steps for this adapter alone (tests, and a single platform)."""
        await self.stop_intake()
        # Replies already in flight need REST: stay connected (bounded) while the core
        # finishes them; whatever is left is handed back by the core's drain.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self.core.pending_jobs and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await self.close()

    # -- intake (the client's listener) -------------------------------------------------

    async def on_message(self, event: discord.Message) -> None:
        await self.intake.on_message(event)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self.intake.on_raw_message_edit(payload)

    # -- Platform (outbound.Outbound) ---------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        return await self.outbound.send_reply(message, reply)

    async def is_admin(self, message: Message) -> bool:
        return await self.outbound.is_admin(message)

    def live_reply(self, message: Message) -> LiveTarget | None:
        return self.outbound.live_reply(message)

    def typing(self, message: Message) -> AbstractAsyncContextManager[None]:
        return self.outbound.typing(message)
