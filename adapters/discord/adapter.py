"""The Discord platform: gateway events in, threaded replies out.

Intake stores every user message through the core (which dedupes on the message id, so a
re-dispatch after a resume does nothing twice) and answers via `send_reply`. Outbound calls
go through discord.py, which waits out 429s itself; we add what it cannot know: which chunks
of a reply were already sent (a retried reply resumes, never repeats) and a deterministic
nonce per part of the reply to a message (`enforce_nonce`), so Discord itself returns the
message a first attempt — or a worker that died mid-send — already created instead of posting
a second one; if that message says something else (a streamed part, an answer regenerated
after a crash) it is edited into this reply.
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
from adapters.discord.live import EditedAnswer
from core.engine import Core
from core.errors import FatalPlatformError
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, Limits, enter_fence, keep_typing
from core.render import render_chunks
from core.streaming import LiveTarget

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


def nonce_for(message: Message, index: int, role: str = "reply") -> str:
    """Same message and part -> same nonce, whatever the text: Discord (enforce_nonce) then
    returns the message it already created instead of posting a second one. 25 characters."""
    return hashlib.sha256(f"{message.event_key}:{role}:{index}".encode()).hexdigest()[:25]


class DiscordAdapter:
    name = "discord"
    limits = PlatformLimits(max_message_chars=MAX_CHARS)
    fences_sends = True  # every create goes through the pacer, which fences right before the call
    checks_posted = True  # nonces: a resend after a crash returns the message already created

    def __init__(self, core: Core, token: str, api_base: str = DEFAULT_API_BASE) -> None:
        self.core = core
        self.token = token
        use_api_base(api_base)
        self.client = MnemoClient(listener=self)
        register_commands(self.client.tree, self._on_command)
        # discord.py runs each event in its own task; submitting under one lock keeps the
        # order in which Discord delivered them (the core answers per conversation in order).
        self._intake = asyncio.Lock()
        # One governor per channel for sends, edits and typing (discord.py adds its buckets).
        self.pacer = KeyedPacer(Limits(interval_s=1.0))
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
        while self.core.pending_jobs and loop.time() < deadline:
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
        await self._acknowledged(message)
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
    async def _acknowledged(message: Message) -> None:
        """Followups of an interaction wait until its deferred response has gone out."""
        deferred = message.reply_context.get("deferred")
        if message.reply_context.get("followup") and isinstance(deferred, asyncio.Event):
            await asyncio.wait_for(deferred.wait(), 30)

    def live_reply(self, message: Message) -> LiveTarget | None:
        context = message.reply_context
        interaction = context.get("interaction")

        def render(reply: Reply) -> list[str]:
            return render_chunks(reply, MAX_CHARS, escape=escape, link=link)

        async def send_whole(reply: Reply) -> list[str]:
            return await self.send_reply(message, reply)

        if isinstance(interaction, discord.Interaction):
            if not context.get("followup"):
                return None
            ephemeral = bool(context.get("ephemeral"))
            key = f"interaction:{interaction.id}"

            async def post_followup(index: int, text: str) -> discord.Message:
                await self._acknowledged(message)
                async with self.pacer.slot(key):
                    return await interaction.followup.send(
                        text, ephemeral=ephemeral, allowed_mentions=NO_PINGS, wait=True
                    )

            async def edit_followup(message_id: int, text: str) -> None:
                async with self.pacer.slot(key):
                    await interaction.followup.edit_message(message_id, content=text, allowed_mentions=NO_PINGS)

            async def delete_followup(message_id: int) -> None:
                async with self.pacer.slot(key):
                    await interaction.followup.delete_message(message_id)

            return EditedAnswer(message, render, post_followup, edit_followup, delete_followup, send_whole)

        channel = self.client.get_partial_messageable(int(message.thread_id or message.conversation_id))

        async def post(index: int, text: str) -> discord.Message:
            return await self._create(channel, message, index, text, reference=index == 0)

        async def edit(message_id: int, text: str) -> None:
            async with self.pacer.slot(channel.id):
                await channel.get_partial_message(message_id).edit(content=text, allowed_mentions=NO_PINGS)

        async def delete(message_id: int) -> None:
            async with self.pacer.slot(channel.id):
                await channel.get_partial_message(message_id).delete()

        return EditedAnswer(message, render, post, edit, delete, send_whole)

    async def _create(
        self, channel: discord.abc.Messageable, message: Message, index: int, chunk: str, *, reference: bool,
        file: discord.File | None = None,
    ) -> discord.Message:
        """Create one part of the reply to `message` (its nonce makes a repeat return the
        message already created; if that one says something else, it is edited to `chunk`)."""
        kwargs: dict[str, Any] = {"allowed_mentions": NO_PINGS, "nonce": nonce_for(message, index)}
        if reference:
            kwargs["reference"] = discord.MessageReference(
                message_id=int(message.message_id),
                channel_id=int(message.thread_id or message.conversation_id),
                fail_if_not_exists=False,  # deleted meanwhile: still answer, unthreaded
            )
        if file is not None:
            kwargs["file"] = file
        key = getattr(channel, "id", None)
        async with self.pacer.slot(key):
            posted = await channel.send(chunk, **kwargs)
        if posted.content != chunk:
            async with self.pacer.slot(key):
                posted = await posted.edit(content=chunk, allowed_mentions=NO_PINGS)
        return posted

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
            file = None
            if index == 0 and reply.file is not None:
                file = discord.File(io.BytesIO(reply.file.data), filename=reply.file.filename)
            posted = await self._create(channel, message, index, chunk, reference=index == 0 and reference, file=file)
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
            await enter_fence()
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

        async def send() -> None:
            if not self.pacer.busy(channel.id):  # typing yields to sends, edits and 429 waits
                async with self.pacer.slot(channel.id, fence=False, counted=False):
                    await channel.typing()

        # One indicator lasts ~10 s; renewed well before it fades.
        async with keep_typing(send, 8.0, "discord"):
            yield
