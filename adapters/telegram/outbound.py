"""core.Reply -> Telegram messages: HTML with everything escaped, split at 4096 characters by
the core's renderer, threaded on the triggering message, paced per chat, and retried on 429
after `retry_after` so a reply is delayed, never dropped or doubled.

The retries are aiogram's session middleware (`SendRetries`): the one retry layer of the
Telegram hop, for the Sender's calls only (polling and getMe have their own loop)."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods.base import Response, TelegramMethod, TelegramType
from aiogram.types import BufferedInputFile, LinkPreviewOptions, ReplyParameters

from core.models import Message, Reply
from core.outbound import KeyedPacer, Limits, PartialSends, retry
from core.render import render_chunks

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096
NETWORK_ATTEMPTS = 4
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

Migrate = Callable[[int, int], Awaitable[None]]
RateLimited = Callable[[float], None]


# Telegram asks bots for about one message a second in a chat, at most 20 a minute in a group,
# and about 30 a second overall; edits and drafts count like messages. Waiting is cheaper than a 429.
PRIVATE_LIMITS = Limits(interval_s=1.0, global_interval_s=1 / 30)
GROUP_LIMITS = Limits(interval_s=1.0, per_minute=20, global_interval_s=1 / 30)


def chat_limits(chat_id: object) -> Limits:
    return GROUP_LIMITS if isinstance(chat_id, int) and chat_id < 0 else PRIVATE_LIMITS  # groups: negative ids


def new_pacer() -> KeyedPacer:
    return KeyedPacer(chat_limits)


class PreviewRateLimited(Exception):
    """A stream preview met a 429: skipped (the chat waits it out); the next carries newer text."""


def html_escape(text: str) -> str:
    return html.escape(text, quote=False)


def html_link(url: str, label: str) -> str:
    # Show the address itself: it survives copy/paste and tells where it leads.
    shown = url.removeprefix("https://")
    return f'<a href="{html.escape(url, quote=True)}">{html_escape(shown)}</a>'


def render_html(reply: Reply) -> list[str]:
    return render_chunks(reply, MAX_MESSAGE_CHARS, escape=html_escape, link=html_link)


class DmNotStarted(Exception):
    """Telegram refuses a bot's first message to a user who never pressed Start."""


# Which kind of Sender call is in progress in this task: "send" (waits out 429s, retries
# network failures), "preview" (a stream update: never retried), None (not a Sender call).
_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("mnemo_telegram_call", default=None)


class SendRetries(BaseRequestMiddleware):
    """aiogram session middleware: a 429 holds the whole chat in the pacer and is waited out
    (counted for /metrics); network failures and 5xx are retried with the kit's backoff,
    NETWORK_ATTEMPTS times in all. It runs inside the pacer slot, so a split reply keeps its
    order."""

    def __init__(self, pacer: KeyedPacer, on_rate_limit: RateLimited) -> None:
        self.pacer = pacer
        self.on_rate_limit = on_rate_limit

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        mode = _CALL.get()
        if mode is None:
            return await make_request(bot, method)
        preview = mode == "preview"
        return await retry(
            lambda: self._waiting_out_429(make_request, bot, method, preview),
            what="Telegram send failed", logger=log, attempts=NETWORK_ATTEMPTS, cap_s=10,
            transient=lambda exc: not preview and isinstance(exc, (TelegramNetworkError, TelegramServerError)),
        )

    async def _waiting_out_429(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType],
        preview: bool,
    ) -> Response[TelegramType]:
        chat: Any = getattr(method, "chat_id", None)
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                # Not sent: Telegram rejected it. Every call to the chat waits it out.
                log.warning("Telegram rate limit in chat %s: retrying after %ss", chat, exc.retry_after)
                self.on_rate_limit(exc.retry_after)
                if chat is not None:
                    self.pacer.hold(chat, exc.retry_after)
                if preview:
                    raise PreviewRateLimited(str(exc)) from exc
                await asyncio.sleep(exc.retry_after)


class Sender:
    def __init__(
        self, bot: Bot, pacer: KeyedPacer, on_migrate: Migrate, on_rate_limit: RateLimited = lambda seconds: None
    ) -> None:
        self.bot = bot
        self.pacer = pacer
        self.on_migrate = on_migrate
        bot.session.middleware(SendRetries(pacer, on_rate_limit))
        # Chunks already sent per (event, reply): if the core retries a reply after a failure
        # half-way, the parts people already got are not sent again. Bounded.
        self.partial: PartialSends[list[str]] = PartialSends(list)

    async def send_reply(self, message: Message, reply: Reply, bot_username: str) -> list[str]:
        chunks = render_html(reply)
        key = _progress_key(message, reply, chunks)
        sent = self.partial.parts(key)
        if reply.private and not message.is_dm:
            await self._send_private(message, reply, chunks, sent, bot_username)
        else:
            chat = int(message.conversation_id)
            await self._send_all(chat, chunks, reply, sent, _reply_to(message), _thread(message))
        # Only a complete reply forgets its progress; a failure keeps it for a retry.
        self.partial.done(key)
        return sent

    async def _send_private(
        self, message: Message, reply: Reply, chunks: list[str], sent: list[str], bot_username: str
    ) -> None:
        try:
            await self._send_all(int(message.author_id), chunks, reply, sent, None, None)
        except DmNotStarted:
            if sent:
                raise  # it worked a moment ago: a real failure, let the core retry
            notice = (
                f"{html_escape(message.author_name)}, I answer that in a private chat, and you haven't "
                f"started one with me yet: open t.me/{html_escape(bot_username)}, press Start, then send it again."
            )
            sent.append(await self.send_text(int(message.conversation_id), notice, _reply_to(message), _thread(message)))

    async def _send_all(
        self, chat: int, chunks: list[str], reply: Reply, sent: list[str], reply_to: int | None, thread: int | None
    ) -> None:
        for index, chunk in enumerate(chunks):
            if index < len(sent):
                continue
            sent.append(await self.send_text(chat, chunk, reply_to, thread))
        if reply.file is not None and len(sent) == len(chunks):
            document = BufferedInputFile(reply.file.data, filename=reply.file.filename)
            sent.append(
                await self._call(
                    chat,
                    lambda c: self.bot.send_document(
                        chat_id=c, document=document, message_thread_id=thread,
                        reply_parameters=_reply_parameters(reply_to),
                    ),
                )
            )

    async def send_text(self, chat: int, text: str, reply_to: int | None, thread: int | None) -> str:
        return await self._call(
            chat,
            lambda c: self.bot.send_message(
                chat_id=c, text=text, parse_mode=ParseMode.HTML, message_thread_id=thread,
                reply_parameters=_reply_parameters(reply_to), link_preview_options=NO_PREVIEW,
            ),
        )

    async def edit_text(self, chat: int, message_id: int, text: str, *, preview: bool = False) -> None:
        async def edit(c: int) -> object:
            try:
                return await self.bot.edit_message_text(
                    chat_id=c, message_id=message_id, text=text, parse_mode=ParseMode.HTML,
                    link_preview_options=NO_PREVIEW,
                )
            except TelegramBadRequest as exc:
                if "not modified" in exc.message.lower():
                    return True  # it already says exactly this (a retried edit that had landed)
                raise

        await self._call(chat, edit, preview=preview)

    async def delete(self, chat: int, message_id: int) -> None:
        await self._call(chat, lambda c: self.bot.delete_message(chat_id=c, message_id=message_id))

    async def draft(self, chat: int, draft_id: int, text: str, thread: int | None) -> None:
        """A streamed draft in a private chat (Bot API sendMessageDraft): nothing is sent yet."""
        await self._call(
            chat,
            lambda c: self.bot.send_message_draft(
                chat_id=c, draft_id=draft_id, text=text, parse_mode=ParseMode.HTML, message_thread_id=thread,
            ),
            preview=True, fence=False,
        )

    async def _call(
        self, chat: int, send: Callable[[int], Awaitable[object]], *, preview: bool = False, fence: bool = True
    ) -> str:
        """One call in the chat's turn (429s and network failures are retried by `SendRetries`
        within it); follows a group's migration. Returns the sent message id ("" for edits).
        The message is marked SENDING (`fence`) only once the turn is ours, right before the
        call. A `preview` (stream update) is never retried: the next one carries newer text."""
        mode = _CALL.set("preview" if preview else "send")
        try:
            while True:
                async with self.pacer.slot(chat, fence=fence):
                    try:
                        result = await send(chat)
                        return str(getattr(result, "message_id", ""))
                    except TelegramMigrateToChat as exc:
                        await self.on_migrate(chat, exc.migrate_to_chat_id)
                        chat = exc.migrate_to_chat_id
                    except TelegramForbiddenError as exc:
                        if chat > 0:
                            raise DmNotStarted(str(exc)) from exc
                        raise
                    except TelegramBadRequest as exc:
                        if chat > 0 and "chat not found" in exc.message.lower():
                            raise DmNotStarted(str(exc)) from exc
                        raise
        finally:
            _CALL.reset(mode)


def _reply_parameters(message_id: int | None) -> ReplyParameters | None:
    if message_id is None:
        return None
    # The answer still arrives if the question was deleted meanwhile.
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def _reply_to(message: Message) -> int | None:
    return int(message.message_id) if message.message_id.lstrip("-").isdigit() else None


def _thread(message: Message) -> int | None:
    return int(message.thread_id) if message.thread_id and message.thread_id.isdigit() else None


def _progress_key(message: Message, reply: Reply, chunks: list[str]) -> str:
    digest = hashlib.sha256()
    for part in (*chunks, str(reply.private), reply.file.filename if reply.file else ""):
        digest.update(part.encode())
        digest.update(b"\0")
    return f"{message.event_key}:{digest.hexdigest()[:16]}"


