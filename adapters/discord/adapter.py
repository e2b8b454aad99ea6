"""The Discord platform: gateway events in, threaded replies out.

Intake stores every user message through the core (which dedupes on the message id, so a
re-dispatch after a resume does nothing twice) and answers via `send_reply`. Outbound calls
go through discord.py, which waits out 429s itself; we add what it cannot know: which chunks
of a reply were already sent (a retried reply resumes, never repeats) and a deterministic
nonce per chunk, so Discord itself drops a resend whose first attempt did get through.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import discord

from adapters.discord import inbound
from adapters.discord.client import DEFAULT_API_BASE, MnemoClient, use_api_base
from adapters.discord.commands import register_commands
from core.engine import Core
from core.errors import FatalPlatformError
from core.models import Message, PlatformLimits, Reply
from core.render import render_chunks

log = logging.getLogger(__name__)

MAX_CHARS = 2000
INTENT_HELP = (
    "Discord refused the Message Content intent (gateway close code 4014). In the Discord Developer "
    "Portal (https://discord.com/developers/applications) open your application -> Bot -> Privileged "
    "Gateway Intents, turn on \"Message Content Intent\", save, and start mnemo again."
)
TOKEN_HELP = (
    "Discord rejected DISCORD_BOT_TOKEN. In the Discord Developer Portal open your application -> Bot -> "
    "Reset Token, and set DISCORD_BOT_TOKEN to the new token."
)
DMS_CLOSED = (
    "I answer that privately, but I can't send you a direct message. Allow direct messages from this "
    "server's members, or use the /{command} command, whose answers only you can see."
)
# Model output and quoted memories never ping anyone; the asker gets the usual reply ping.
NO_PINGS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
_NETWORK_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, asyncio.TimeoutError)


def escape(text: str) -> str:
    """Markdown is kept (models write it and Discord renders it); @everyone, @here and
    mention tokens are defused so they read as text. AllowedMentions enforces no pings anyway."""
    return discord.utils.escape_mentions(text)


def link(url: str, label: str) -> str:
    return f"[{label}](<{url}>)"  # <...>: no embed preview under every footnote


def nonce_for(message: Message, index: int, chunk: str) -> str:
    """Same message, chunk and text -> same nonce; Discord (enforce_nonce) then returns the
    message it already created instead of posting a second one. At most 25 characters."""
    return hashlib.sha256(f"{message.event_key}:{index}:{chunk}".encode()).hexdigest()[:25]


class DiscordAdapter:
    name = "discord"
    limits = PlatformLimits(max_message_chars=MAX_CHARS)

    def __init__(self, core: Core, token: str, api_base: str = DEFAULT_API_BASE) -> None:
        self.core = core
        self.token = token
        use_api_base(api_base)
        self.client = MnemoClient(listener=self)
        register_commands(self.client.tree, self._on_command)
        # discord.py runs each event in its own task; submitting under one lock keeps the
        # order in which Discord delivered them (the core answers per conversation in order).
        self._intake = asyncio.Lock()
        self._stopping = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        return []  # everything arrives over the gateway

    async def run(self) -> None:
        try:
            await self._login()
            if self._stopping.is_set():
                return
            await self.client.connect(reconnect=True)
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
        delay = 1.0
        while True:
            try:
                await self.client.login(self.token)
                return
            except (aiohttp.ClientError, OSError, discord.DiscordServerError) as exc:
                log.warning("discord: cannot reach the API (%s); retrying in %.0fs", type(exc).__name__, delay)
                # Closing the HTTP session closes its connector too, and discord.py reuses the
                # connector on the next login ("Session is closed"): drop it for a fresh one.
                await self.client.http.close()
                self.client.http.connector = discord.utils.MISSING
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return  # stop() while waiting: run() finds the client closed
                except TimeoutError:
                    pass
                delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        self._stopping.set()
        # Replies already in flight need REST: stay connected (bounded) while the core
        # finishes them; whatever is left is handed back by the core's drain.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self.core.runner.pending and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await self.client.close()

    # -- intake -------------------------------------------------------------------------

    async def _submit(self, message: Message) -> asyncio.Future[None] | None:
        async with self._intake:
            return await self.core.submit(message)

    async def on_message(self, event: discord.Message) -> None:
        me = self.client.user
        if me is None:
            return
        message = inbound.from_message(event, me.id)
        if message is None:
            return
        try:
            await self._submit(message)
        except Exception:
            log.exception("discord: could not store message %s", message.event_key)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        me = self.client.user
        if me is None or "content" not in payload.data:
            return  # embeds resolving, pins...: the text did not change
        message = inbound.from_message(payload.message, me.id)
        if message is None:
            return
        message.edited = True
        try:
            await self._submit(message)
        except Exception:
            log.exception("discord: could not apply edit %s", message.event_key)

    async def _on_command(self, interaction: discord.Interaction, text: str, private: bool) -> None:
        message = inbound.from_interaction(interaction, text)
        deferred = asyncio.Event()
        message.reply_context.update(deferred=deferred, ephemeral=private, followup=True)
        try:
            future = await self._submit(message)
        except Exception:
            log.exception("discord: could not store command %s", message.event_key)
            deferred.set()
            try:
                await interaction.response.send_message(
                    "Something went wrong on my side and I couldn't save that; please try again.", ephemeral=True
                )
            except _NETWORK_ERRORS:
                pass
            return
        if future is None:
            deferred.set()
            return  # a re-dispatched interaction: it was acknowledged the first time
        try:
            # Acknowledge within Discord's 3 s; the answer follows as followup messages.
            await interaction.response.defer(ephemeral=private, thinking=True)
        except _NETWORK_ERRORS as exc:
            log.warning("discord: could not acknowledge interaction %s: %s", interaction.id, exc)
            message.reply_context["followup"] = False
        finally:
            deferred.set()

    # -- Platform -----------------------------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        chunks = render_chunks(reply, MAX_CHARS, escape=escape, link=link)
        sent = self._progress(message, chunks)
        context = message.reply_context
        interaction = context.get("interaction")
        if isinstance(interaction, discord.Interaction) and context.get("followup"):
            deferred = context.get("deferred")
            if isinstance(deferred, asyncio.Event):
                await asyncio.wait_for(deferred.wait(), 30)
        if isinstance(interaction, discord.Interaction) and context.get("followup"):
            try:
                return await self._send_followups(interaction, reply, chunks, sent, bool(context.get("ephemeral")))
            except discord.HTTPException as exc:
                if sent or exc.status not in (401, 403, 404):
                    raise
                # The interaction token expired (15 min): answer the ordinary way instead.
                log.warning("discord: interaction %s expired; replying without it", interaction.id)
                context["followup"] = False
        if reply.private and not message.is_dm:
            return await self._send_privately(message, reply, chunks, sent)
        channel = self.client.get_partial_messageable(int(message.thread_id or message.conversation_id))
        return await self._send_to_channel(channel, message, reply, chunks, sent, reference=True)

    @staticmethod
    def _progress(message: Message, chunks: list[str]) -> list[str]:
        """Ids of the chunks of this very reply already sent (a retried send resumes)."""
        state = message.reply_context.get("discord_sent")
        if not (isinstance(state, tuple) and state[0] == chunks):
            state = (chunks, [])
            message.reply_context["discord_sent"] = state
        return state[1]

    async def _send_to_channel(
        self,
        channel: discord.abc.Messageable,
        message: Message,
        reply: Reply,
        chunks: list[str],
        sent: list[str],
        reference: bool,
    ) -> list[str]:
        for index, chunk in enumerate(chunks):
            if index < len(sent):
                continue
            kwargs: dict[str, Any] = {"allowed_mentions": NO_PINGS, "nonce": nonce_for(message, index, chunk)}
            if index == 0 and reference:
                kwargs["reference"] = discord.MessageReference(
                    message_id=int(message.message_id),
                    channel_id=int(message.thread_id or message.conversation_id),
                    fail_if_not_exists=False,  # deleted meanwhile: still answer, unthreaded
                )
            if index == 0 and reply.file is not None:
                kwargs["file"] = discord.File(io.BytesIO(reply.file.data), filename=reply.file.filename)
            posted = await channel.send(chunk, **kwargs)
            sent.append(str(posted.id))
        return list(sent)

    async def _send_followups(
        self, interaction: discord.Interaction, reply: Reply, chunks: list[str], sent: list[str], ephemeral: bool
    ) -> list[str]:
        # The first followup replaces the "thinking…" response and keeps its visibility;
        # the rest match it, so a private answer never continues in public.
        ephemeral = ephemeral or reply.private
        for index, chunk in enumerate(chunks):
            if index < len(sent):
                continue
            kwargs: dict[str, Any] = {"ephemeral": ephemeral, "allowed_mentions": NO_PINGS, "wait": True}
            if index == 0 and reply.file is not None:
                kwargs["file"] = discord.File(io.BytesIO(reply.file.data), filename=reply.file.filename)
            posted = await interaction.followup.send(chunk, **kwargs)
            sent.append(str(posted.id))
        return list(sent)

    async def _send_privately(self, message: Message, reply: Reply, chunks: list[str], sent: list[str]) -> list[str]:
        """A private answer to a plain message in a guild: a DM (Discord has no ephemeral
        messages outside interactions). With DMs closed, say so in the channel, nothing more."""
        user_id = int(message.author_id)
        try:
            user = self.client.get_user(user_id) or await self.client.fetch_user(user_id)
            dm = user.dm_channel or await user.create_dm()
            return await self._send_to_channel(dm, message, reply, chunks, sent, reference=False)
        except discord.Forbidden:
            if sent:
                raise
            command = (message.text.strip().lstrip("/").split() or ["memory"])[0]
            note = Reply(DMS_CLOSED.format(command=command), is_error=True)
            note_chunks = render_chunks(note, MAX_CHARS, escape=escape, link=link)
            channel = self.client.get_partial_messageable(int(message.thread_id or message.conversation_id))
            return await self._send_to_channel(
                channel, message, note, note_chunks, self._progress(message, note_chunks), reference=True
            )

    async def is_admin(self, message: Message) -> bool:
        known = message.reply_context.get("manage_channels")
        if isinstance(known, bool):
            return known
        # A message recovered from storage has no event at hand: ask Discord.
        try:
            channel_id = int(message.thread_id or message.conversation_id)
            channel = self.client.get_channel(channel_id) or await self.client.fetch_channel(channel_id)
            guild = getattr(channel, "guild", None)
            if guild is None:
                return False
            member = guild.get_member(int(message.author_id)) or await guild.fetch_member(int(message.author_id))
            return bool(channel.permissions_for(member).manage_channels)  # type: ignore[union-attr]
        except _NETWORK_ERRORS as exc:
            log.warning("discord: could not check permissions: %s", type(exc).__name__)
            return False

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        if isinstance(message.reply_context.get("interaction"), discord.Interaction):
            yield  # the deferred response already shows "Mnemo is thinking…"
            return
        channel = self.client.get_partial_messageable(int(message.thread_id or message.conversation_id))
        task = asyncio.create_task(self._keep_typing(channel), name="discord-typing")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @staticmethod
    async def _keep_typing(channel: discord.PartialMessageable) -> None:
        # One indicator lasts ~10 s; renew it. A failed indicator never fails the answer.
        while True:
            try:
                await channel.typing()
            except _NETWORK_ERRORS as exc:
                log.debug("discord: typing indicator failed: %s", type(exc).__name__)
            await asyncio.sleep(8)
