"""Telegram messages -> `core.Message`: who said what, where, whether the bot was addressed,
and which files it carries (declared with their size, downloaded only when the core asks)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiogram.types import Message as TgMessage
from aiogram.types import MessageEntity

from core.models import Attachment, AttachmentKind, Message

PLATFORM = "telegram"

# file_id -> bytes; the adapter supplies it (getFile + download).
Downloader = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str  # without "@"

    @property
    def mention(self) -> str:
        return f"@{self.username}".lower()


def to_core_message(tg: TgMessage, me: BotIdentity, download: Downloader, *, edited: bool = False) -> Message | None:
    """Normalize one Telegram message; None when there is nothing for the core (service
    messages, or a command addressed to another bot)."""
    text = tg.text or tg.caption or ""
    attachments = attachments_of(tg, download)
    if not text.strip() and not attachments:
        return None  # joins, pins, topic edits...: nothing anyone said
    if _command_for_other_bot(text, me):
        return None
    if tg.sender_chat is None and tg.from_user is not None and tg.from_user.is_bot:
        return None  # another bot (as on Slack and Discord); anonymous admins come as GroupAnonymousBot with sender_chat
    author_id, author_name = _author(tg)
    return Message(
        platform=PLATFORM,
        conversation_id=str(tg.chat.id),
        message_id=str(tg.message_id),
        author_id=author_id,
        author_name=author_name,
        text=_strip_own_command_suffix(text, me),
        is_dm=tg.chat.type == "private",
        ts=tg.date,
        # Only forum topics are threads: in other supergroups message_thread_id marks a reply chain.
        thread_id=str(tg.message_thread_id) if tg.is_topic_message and tg.message_thread_id else None,
        mentions_bot=mentions_bot(tg, me),
        replies_to_bot=replies_to_bot(tg, me),
        # t.me/c/... works for every member, also in public groups (the memory is group-scoped).
        link=tg.get_url(force_private=True),
        attachments=attachments,
        conversation_title=tg.chat.title,
        edited=edited,
    )


def _author(tg: TgMessage) -> tuple[str, str]:
    # Anonymous admins and linked channels post as a chat, not a user.
    if tg.sender_chat is not None:
        return str(tg.sender_chat.id), tg.sender_chat.title or tg.sender_chat.full_name
    if tg.from_user is not None:
        return str(tg.from_user.id), tg.from_user.full_name or tg.from_user.username or str(tg.from_user.id)
    return str(tg.chat.id), tg.chat.full_name


def mentions_bot(tg: TgMessage, me: BotIdentity) -> bool:
    text = tg.text or tg.caption or ""
    entities: list[MessageEntity] = list(tg.entities or tg.caption_entities or [])
    for entity in entities:
        if entity.type == "mention" and entity.extract_from(text).lower() == me.mention:
            return True
        if entity.type == "text_mention" and entity.user is not None and entity.user.id == me.id:
            return True
    return False


def replies_to_bot(tg: TgMessage, me: BotIdentity) -> bool:
    original = tg.reply_to_message
    if original is None or original.forum_topic_created is not None:
        return False  # in topics every message "replies" to the topic's creation message
    return original.from_user is not None and original.from_user.id == me.id


_ADDRESSED_COMMAND = re.compile(r"^(/\w+)@(\w+)(.*)$", re.DOTALL)


def _command_for_other_bot(text: str, me: BotIdentity) -> bool:
    """`/ask@other_bot ...` in a group is meant for another bot."""
    match = _ADDRESSED_COMMAND.match(text)
    return match is not None and match.group(2).lower() != me.username.lower()


def _strip_own_command_suffix(text: str, me: BotIdentity) -> str:
    """`/ask@mnemo_bot question` -> `/ask question` (the form the core parses)."""
    match = _ADDRESSED_COMMAND.match(text)
    if match is None:
        return text
    return match.group(1) + match.group(3)


def attachments_of(tg: TgMessage, download: Downloader) -> list[Attachment]:
    found: list[Attachment] = []

    def add(kind: AttachmentKind, file_id: str, filename: str, mime: str | None, size: int | None,
            duration: float | None = None) -> None:
        found.append(
            Attachment(kind=kind, filename=filename, mime_type=mime, size=size, duration_s=duration,
                       fetch=lambda: download(file_id))
        )

    if tg.voice is not None:
        add("voice", tg.voice.file_id, "voice.ogg", tg.voice.mime_type or "audio/ogg", tg.voice.file_size,
            tg.voice.duration)
    if tg.audio is not None:
        add("audio", tg.audio.file_id, tg.audio.file_name or "audio", tg.audio.mime_type, tg.audio.file_size,
            tg.audio.duration)
    if tg.video_note is not None:
        # A round video message is someone speaking: the core reads its sound track.
        add("voice", tg.video_note.file_id, "video_note.mp4", "video/mp4", tg.video_note.file_size,
            tg.video_note.duration)
    if tg.photo:
        largest = max(tg.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        add("image", largest.file_id, "photo.jpg", "image/jpeg", largest.file_size)
    if tg.document is not None:
        doc = tg.document
        mime = doc.mime_type or ""
        kind: AttachmentKind = "image" if mime.startswith("image/") else "audio" if mime.startswith("audio/") else "file"
        add(kind, doc.file_id, doc.file_name or "document", doc.mime_type, doc.file_size)
    return found
