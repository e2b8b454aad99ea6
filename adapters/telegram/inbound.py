"""Telegram updates -> `core.Message`: receiving them (long polling, or the webhook on the
shared HTTP server), who said what, where, whether the bot was addressed, and which files it
carries (declared with their size, downloaded only when the core asks)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from pathlib import Path

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramUnauthorizedError,
)
from aiogram.types import Message as TgMessage
from aiogram.types import MessageEntity, Update
from aiohttp import web
from pydantic import ValidationError

from core.errors import FatalPlatformError
from core.errors import is_transient as store_transient
from core.models import Attachment, AttachmentKind, Message
from core.outbound import Stopped, retry, until_stopped
from core.platform import CorePort

log = logging.getLogger(__name__)

PLATFORM = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message"]
SEEN_UPDATES = 10_000

# file_id -> bytes; the adapter supplies it (getFile + download).
Downloader = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str  # without "@"

    @property
    def mention(self) -> str:
        return f"@{self.username}".lower()


class Receiver:
    """Updates in: each one stored by the core before it is confirmed (the next getUpdates
    offset, or the webhook's 200); one that can never be stored is quarantined, so a bad
    update never stops every chat's intake."""

    def __init__(
        self, core: CorePort, bot: Bot, stopping: asyncio.Event, migrate: Callable[[int, int], Awaitable[None]],
        *, webhook_secret: str | None, poll_timeout_s: int, api_base: str | None = None,
    ) -> None:
        self.core = core
        self.bot = bot
        self.stopping = stopping
        self.migrate = migrate
        self.webhook_secret = webhook_secret
        self.poll_timeout_s = poll_timeout_s
        self.explain = failure_explainer(api_base)
        self.me: BotIdentity | None = None
        self._seen_updates: OrderedDict[int, None] = OrderedDict()

    async def _next_updates(self, offset: int | None) -> list[Update]:
        fetch = self.bot.get_updates(offset=offset, timeout=self.poll_timeout_s, allowed_updates=ALLOWED_UPDATES)
        return await until_stopped(fetch, self.stopping)

    async def poll(self) -> None:
        offset: int | None = None
        while not self.stopping.is_set():
            try:
                updates = await retry(
                    partial(self._next_updates, offset),
                    what="Telegram: getUpdates failed", logger=log, stopping=self.stopping,
                    transient=lambda exc: isinstance(exc, TelegramAPIError)
                    and not isinstance(exc, TelegramUnauthorizedError),
                    explain=self.explain,
                )
            except Stopped:
                return
            except TelegramUnauthorizedError as exc:
                raise FatalPlatformError("TELEGRAM_BOT_TOKEN was rejected by Telegram (401 Unauthorized)") from exc
            for update in updates:
                if not await self._intake_until_stored(update):
                    return  # stopping: the update stays unconfirmed and comes again next start
                # Confirmed (by the next getUpdates offset) only after the core has stored it.
                offset = update.update_id + 1

    async def _intake_until_stored(self, update: Update) -> bool:
        try:
            await retry(lambda: self.intake(update), what=f"Telegram: storing update {update.update_id} failed",
                        logger=log, stopping=self.stopping, transient=store_transient)
        except Stopped:
            return False
        except Exception as exc:  # noqa: BLE001 - definite: quarantined, then confirmed
            await self._quarantine(update, exc)
        return True  # one bad update never stops every chat's intake

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """POST /telegram/webhook: check the secret, store the update, acknowledge; the core
        answers in its own background tasks."""
        given = request.headers.get(SECRET_HEADER, "")
        if not self.webhook_secret or not hmac.compare_digest(given.encode(), self.webhook_secret.encode()):
            return web.Response(status=401, text="bad secret token")
        try:
            update = Update.model_validate(await request.json(), context={"bot": self.bot})
        except (ValueError, ValidationError):
            return web.Response(status=400, text="not a Telegram update")
        if self.me is None:
            return web.Response(status=503, text="starting")  # Telegram delivers it again
        try:
            await self.intake(update)
        except Exception as exc:
            if not store_transient(exc):
                await self._quarantine(update, exc)
                return web.Response(status=200)  # never stored, kept aside: a redelivery cannot help
            log.exception("Telegram: storing update %s failed", update.update_id)
            return web.Response(status=500, text="try again")  # Telegram redelivers; nothing is lost
        return web.Response(status=200)

    async def _quarantine(self, update: Update, error: Exception) -> None:
        try:
            payload: str | None = json.dumps(update.model_dump(mode="json", exclude_none=True))
        except Exception:  # noqa: BLE001 - what could not be stored may not serialise either
            payload = None
        await self.core.quarantine(PLATFORM, str(update.update_id), payload, error)

    async def intake(self, update: Update) -> None:
        """One update -> the core. A redelivered update_id does nothing; the core's dedupe
        (telegram:chat:message) covers redeliveries from before a restart."""
        if update.update_id in self._seen_updates:
            return
        tg = update.message or update.edited_message
        if tg is not None and self.me is not None:
            if tg.migrate_to_chat_id is not None:
                log.info("Telegram: group %s became supergroup %s", tg.chat.id, tg.migrate_to_chat_id)
                await self.migrate(tg.chat.id, tg.migrate_to_chat_id)
            else:
                message = self._normalize(update)
                if message is not None:
                    await self.core.submit(message)
        self._seen_updates[update.update_id] = None
        while len(self._seen_updates) > SEEN_UPDATES:
            self._seen_updates.popitem(last=False)

    def _normalize(self, update: Update) -> Message | None:
        tg = update.message or update.edited_message
        assert tg is not None and self.me is not None
        try:
            return to_core_message(tg, self.me, self._download, edited=update.edited_message is not None)
        except Exception:  # a shape we don't understand: log it, never block the chat behind it
            log.exception("Telegram: could not read update %s", update.update_id)
            return None

    async def _download(self, file_id: str) -> bytes:
        file = await self.bot.get_file(file_id)
        if not file.file_path:
            raise ValueError("Telegram returned no file_path")
        if Path(file.file_path).is_absolute():
            # A self-hosted Bot API server in --local mode hands out paths on its own disk.
            return await asyncio.to_thread(Path(file.file_path).read_bytes)
        buffer = await self.bot.download_file(file.file_path, timeout=300)
        assert isinstance(buffer, BytesIO)
        return buffer.getvalue()


def failure_explainer(api_base: str | None) -> Callable[[BaseException], str]:
    """What a retried Bot API failure means, for the log line of each attempt."""
    where = api_base or "https://api.telegram.org (set TELEGRAM_API_BASE for another server)"

    def explain(exc: BaseException) -> str:
        if isinstance(exc, TelegramConflictError):
            return "another process is receiving this bot's updates (a second `mnemo run`?)"
        if isinstance(exc, TelegramNetworkError):
            return f"Telegram's Bot API cannot be reached at {where}: TelegramNetworkError"
        return type(exc).__name__

    return explain


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
