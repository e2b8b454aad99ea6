"""Discord events -> core.Message.

Public threads keep the memory and settings of their channel: conversation_id is the parent
channel, thread_id the thread (replies go into the thread). A private thread is its own
conversation and privacy scope (not every member of the parent can read it): both ids are
the thread's. Message ids are snowflakes, so
`discord:<channel>:<message>` identifies an event across redeliveries and resumes.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re

import aiohttp
import discord

from core.models import Attachment, AttachmentKind, Message
from core.platform import CorePort

log = logging.getLogger(__name__)

PLATFORM = "discord"
_NETWORK_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, asyncio.TimeoutError)
_MENTION_TOKEN = re.compile(r"<(?:@[!&]?|#)(\d+)>")
_ANSWERABLE = (discord.MessageType.default, discord.MessageType.reply)


def conversation_of(channel: object) -> tuple[str, str | None]:
    """(conversation_id, thread_id) for a channel: a public thread belongs to its parent
    channel; a private thread (type 12) is its own conversation."""
    if isinstance(channel, discord.Thread):
        if channel.type is discord.ChannelType.private_thread:
            return str(channel.id), str(channel.id)
        return str(channel.parent_id), str(channel.id)
    return str(getattr(channel, "id", "")), None


def _readable(message: discord.Message, bot_id: int) -> str:
    """The text with mention tokens as names; mentions of the bot (the addressing) removed."""
    names: dict[str, str] = {str(bot_id): ""}
    for user in message.mentions:
        names.setdefault(str(user.id), f"@{user.display_name}")
    for role in message.role_mentions:
        names.setdefault(str(role.id), f"@{role.name}")
    for channel in message.channel_mentions:
        names.setdefault(str(channel.id), f"#{channel.name}")
    text = _MENTION_TOKEN.sub(lambda m: names.get(m.group(1), m.group(0)), message.content)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _attachment(item: discord.Attachment, voice_flag: bool) -> Attachment:
    mime = (item.content_type or mimetypes.guess_type(item.filename)[0] or "").split(";")[0].strip().lower()
    kind: AttachmentKind
    if item.is_voice_message() or (voice_flag and mime.startswith("audio/")):
        kind = "voice"
    elif mime.startswith("audio/"):
        kind = "audio"
    elif mime.startswith("image/"):
        kind = "image"
    else:
        kind = "file"  # the core answers that it cannot read it (clear reply), nothing is lost
    # Declared size first: the core refuses oversize files before `fetch` downloads anything.
    return Attachment(
        kind=kind, filename=item.filename, mime_type=mime or None, size=item.size,
        duration_s=item.duration, fetch=item.read,
    )


def _may_manage_channels(message: discord.Message) -> bool | None:
    author = message.author
    if not isinstance(author, discord.Member) or isinstance(message.channel, (discord.DMChannel,)):
        return None
    permissions_for = getattr(message.channel, "permissions_for", None)
    if permissions_for is None:
        return None
    try:
        return bool(permissions_for(author).manage_channels)
    except Exception:  # noqa: BLE001 - an uncached channel/role; is_admin asks Discord instead
        return None


def from_message(message: discord.Message, bot_id: int) -> Message | None:
    """A user's message, or None for what Mnemo never reads (bots, webhooks, system notices)."""
    if message.author.bot or message.webhook_id is not None or message.type not in _ANSWERABLE:
        return None
    conversation_id, thread_id = conversation_of(message.channel)
    is_dm = message.guild is None
    mentions_bot = any(user.id == bot_id for user in message.mentions)
    guild = message.guild
    if guild is not None and guild.self_role is not None and guild.self_role in message.role_mentions:
        mentions_bot = True  # "@Mnemo" picked from the role list addresses the bot too
    resolved = message.reference.resolved if message.reference is not None else None
    replies_to_bot = isinstance(resolved, discord.Message) and resolved.author.id == bot_id
    voice_flag = message.flags.voice
    context: dict[str, object] = {}
    admin = _may_manage_channels(message)
    if admin is not None:
        context["manage_channels"] = admin
    return Message(
        platform=PLATFORM,
        conversation_id=conversation_id,
        message_id=str(message.id),
        author_id=str(message.author.id),
        author_name=message.author.display_name,
        text=_readable(message, bot_id),
        is_dm=is_dm,
        ts=message.created_at,
        thread_id=thread_id,
        mentions_bot=mentions_bot,
        replies_to_bot=replies_to_bot,
        link=message.jump_url,
        attachments=[_attachment(item, voice_flag) for item in message.attachments],
        conversation_title=None if is_dm else f"#{getattr(message.channel, 'name', conversation_id)}",
        reply_context=context,
    )


def from_interaction(interaction: discord.Interaction, text: str) -> Message:
    """An application command as core command text ("/memory 2"), out of band."""
    conversation_id, thread_id = conversation_of(interaction.channel)
    if not conversation_id:
        conversation_id = str(interaction.channel_id)
    is_dm = interaction.guild_id is None
    return Message(
        platform=PLATFORM,
        conversation_id=conversation_id,
        message_id=str(interaction.id),
        author_id=str(interaction.user.id),
        author_name=interaction.user.display_name,
        text=text,
        is_dm=is_dm,
        ts=interaction.created_at,
        thread_id=thread_id,
        is_command=True,
        conversation_title=None if is_dm else f"#{getattr(interaction.channel, 'name', conversation_id)}",
        # Channel permissions Discord resolved for this member in this channel (overwrites included).
        reply_context={"interaction": interaction, "manage_channels": interaction.permissions.manage_channels},
    )


class Intake:
    """Gateway events -> the core, stored in the order Discord delivered them. The core
    dedupes on the message id, so a re-dispatch after a resume does nothing twice."""

    def __init__(self, core: CorePort, client: discord.Client) -> None:
        self.core = core
        self.client = client
        # discord.py runs each event in its own task; submitting under one lock keeps the
        # order in which Discord delivered them (the core answers per conversation in order).
        self._lock = asyncio.Lock()

    async def _submit(self, message: Message) -> asyncio.Future[None] | None:
        async with self._lock:
            return await self.core.submit(message)

    async def on_message(self, event: discord.Message) -> None:
        me = self.client.user
        if me is None:
            return
        message = from_message(event, me.id)
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
        message = from_message(payload.message, me.id)
        if message is None:
            return
        message.edited = True
        try:
            await self._submit(message)
        except Exception:
            log.exception("discord: could not apply edit %s", message.event_key)

    async def on_command(self, interaction: discord.Interaction, text: str, private: bool) -> None:
        message = from_interaction(interaction, text)
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
