"""core.Reply -> Discord: threaded replies, interaction followups, private answers by DM.

discord.py waits out 429s itself (per bucket; a limit longer than the client's
`max_ratelimit_timeout` fails the send instead of holding the conversation) and retries
502/504s. We add what it cannot know: which chunks of a reply were already sent (the kit's
bounded `PartialSends`: a reply sent again resumes, never repeats), a retry of a part that met
a transient failure (503, the network), and a deterministic nonce per part of the reply to
a message (`enforce_nonce`), so Discord itself returns the message a first attempt — or a
worker that died mid-send — already created instead of posting a second one; if that message
says something else (a streamed part, an answer regenerated after a crash) it is edited into
this reply.
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

from adapters.discord.live import EditedAnswer
from core.models import Message, Reply
from core.outbound import KeyedPacer, PartialSends, enter_fence, keep_typing, retried_here, retry
from core.render import render_chunks
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

MAX_CHARS = 2000
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
PART_ATTEMPTS = 3  # a part that meets a 503 or a network failure is tried this often


class Outbound:
    """What the core calls back on Discord (the adapter's Platform methods delegate here)."""

    def __init__(self, client: discord.Client, pacer: KeyedPacer) -> None:
        self.client = client
        self.pacer = pacer
        self.partial: PartialSends[list[str]] = PartialSends(list)

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        async with retried_here():
            sent = await self._send_reply(message, reply)
        # Complete: nothing to resume (a private answer's notice, if any, ages out of the record).
        self.partial.done(self._key(message, render_chunks(reply, MAX_CHARS, escape=escape, link=link)))
        return sent

    async def _send_reply(self, message: Message, reply: Reply) -> list[str]:
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

        async def send() -> discord.Message:
            async with self.pacer.slot(key):
                return await channel.send(chunk, **kwargs)

        # The nonce makes a repeat safe: Discord returns the message if the first one landed.
        posted = await retry(send, what="discord: sending a reply failed", logger=log, attempts=PART_ATTEMPTS,
                             cap_s=10)
        if posted.content != chunk:
            async with self.pacer.slot(key):
                posted = await posted.edit(content=chunk, allowed_mentions=NO_PINGS)
        return posted

    def _progress(self, message: Message, chunks: list[str]) -> list[str]:
        """Ids of the chunks of this very reply already sent (a retried send resumes)."""
        return self.partial.parts(self._key(message, chunks))

    @staticmethod
    def _key(message: Message, chunks: list[str]) -> str:
        return f"{message.event_key}:{hashlib.sha256(chr(0).join(chunks).encode()).hexdigest()[:16]}"

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
