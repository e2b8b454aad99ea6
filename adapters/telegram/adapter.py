"""The Telegram adapter: wiring and lifecycle. Updates come in through `inbound.Receiver`
(long polling, or a webhook on the shared HTTP server); replies go out through
`outbound.Sender`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction, ChatMemberStatus
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramUnauthorizedError
from aiogram.types import BotCommand, Update
from aiogram.utils.token import TokenValidationError, validate_token
from aiohttp import web

from adapters.telegram.inbound import ALLOWED_UPDATES, PLATFORM, WEBHOOK_PATH, BotIdentity, Receiver
from adapters.telegram.live import DraftAnswer, EditedAnswer
from adapters.telegram.outbound import MAX_MESSAGE_CHARS, Sender, new_pacer
from core.errors import FatalPlatformError
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, Stopped, keep_typing, retried_here, retry, until_stopped
from core.platform import CorePort, Route
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

GETFILE_CAP_BYTES = 20 * 1024 * 1024  # the official Bot API's download limit
TYPING_EVERY_S = 4.0  # Telegram shows a chat action for about 5 seconds

COMMANDS = [
    BotCommand(command="start", description="What I do and how to use me"),
    BotCommand(command="help", description="How to use me"),
    BotCommand(command="ask", description="Ask me a question (in groups)"),
    BotCommand(command="memory", description="What I remember from you"),
    BotCommand(command="profile", description="What I've learned about you, with sources"),
    BotCommand(command="forget", description="Forget one memory (ID) or all"),
    BotCommand(command="export", description="All your data as a JSON file"),
    BotCommand(command="settings", description="This chat's settings (admins can change them)"),
    BotCommand(command="dashboard", description="A one-time link to your web page"),
]


def _reachable_failure(exc: BaseException) -> bool:
    """Worth retrying at start-up: anything but a refused token."""
    return isinstance(exc, TelegramAPIError) and not isinstance(exc, TelegramUnauthorizedError)


class TelegramAdapter:
    name = PLATFORM
    fences_sends = True  # every send goes through the pacer, which fences right before the call
    checks_posted = False  # the Bot API cannot list what the bot sent: an interrupted send apologises

    def __init__(
        self,
        core: CorePort,
        token: str,
        api_base: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        poll_timeout_s: int = 25,
        pacer: KeyedPacer | None = None,
    ) -> None:
        self.core = core
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        # A self-hosted Bot API server lifts the 20 MB getFile cap (MNEMO_MAX_FILE_MB still applies).
        self.limits = PlatformLimits(MAX_MESSAGE_CHARS, max_download_bytes=None if api_base else GETFILE_CAP_BYTES)
        self._token_problem: str | None = None
        try:
            validate_token(token)
        except TokenValidationError:
            self._token_problem = (
                "TELEGRAM_BOT_TOKEN is not a bot token (BotFather gives one like 123456789:AA...); copy it again"
            )
            token = "0:invalid"  # keeps the object whole; run() refuses to start
        session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else AiohttpSession()
        self.bot = Bot(token, session=session)
        self.pacer = pacer or new_pacer()
        self.sender = Sender(self.bot, self.pacer, self._migrate,
                             on_rate_limit=lambda seconds: core.note_rate_limit(PLATFORM, seconds))
        self._stopping = asyncio.Event()
        self._receiving = False  # run() is between start and return
        self.receiver = Receiver(core, self.bot, self._stopping, self._migrate,
                                 webhook_secret=webhook_secret, poll_timeout_s=poll_timeout_s, api_base=api_base)

    @property
    def me(self) -> BotIdentity | None:
        return self.receiver.me

    # -- lifecycle ----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [("POST", WEBHOOK_PATH, self.handle_webhook)] if self.webhook_url else []

    async def run(self) -> None:
        if self._token_problem:
            raise FatalPlatformError(self._token_problem)
        self._receiving = True
        try:
            await self._receive()
        except Stopped:
            pass
        finally:
            self._receiving = False

    async def _receive(self) -> None:
        me = await self._get_me()
        self.receiver.me = BotIdentity(me.id, me.username or "")
        log.info("Telegram: connected as @%s (%s)", me.username, "webhook" if self.webhook_url else "polling")
        try:
            await self.bot.set_my_commands(COMMANDS)
        except TelegramAPIError as exc:
            log.warning("Telegram: setMyCommands failed (%s); commands still work when typed", exc)
        if self.webhook_url:
            await self._set_webhook()
            await self._stopping.wait()
        else:
            # getUpdates refuses to work while a webhook is set (e.g. left over from webhook mode).
            try:
                await until_stopped(self.bot.delete_webhook(drop_pending_updates=False), self._stopping)
            except TelegramAPIError as exc:  # getUpdates will say so if a webhook is really in the way
                log.warning("Telegram: deleteWebhook failed (%s)", type(exc).__name__)
            await self.receiver.poll()

    async def stop_intake(self) -> None:
        self._stopping.set()
        # The receive loop notices at once; let it finish before its connection closes.
        for _ in range(50):
            if not self._receiving:
                break
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.bot.session.close()

    async def stop(self) -> None:
        """All three steps for this adapter alone (tests, and a single platform)."""
        await self.stop_intake()
        # Let replies already queued reach people before the connection closes.
        for _ in range(100):
            if self.core.pending_jobs == 0:
                break
            await asyncio.sleep(0.1)
        await self.close()

    async def _get_me(self) -> Any:
        """getMe until it answers: Telegram down at start-up is retried with backoff, one line
        per attempt, until stop_intake()."""
        try:
            return await retry(lambda: until_stopped(self.bot.get_me(), self._stopping), what="Telegram: getMe failed",
                               logger=log, stopping=self._stopping, transient=_reachable_failure,
                               explain=self.receiver.explain)
        except TelegramUnauthorizedError as exc:
            raise FatalPlatformError(
                "TELEGRAM_BOT_TOKEN was rejected by Telegram (401 Unauthorized): copy the token from "
                "@BotFather again, or /revoke and use the new one"
            ) from exc

    async def _set_webhook(self) -> None:
        assert self.webhook_url is not None
        url = self.webhook_url
        try:
            await retry(
                lambda: self.bot.set_webhook(url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES,
                                             drop_pending_updates=False),
                what="Telegram: setWebhook failed", logger=log, stopping=self._stopping, explain=self.receiver.explain,
                transient=lambda exc: _reachable_failure(exc) and not isinstance(exc, TelegramBadRequest),
            )
        except TelegramBadRequest as exc:
            raise FatalPlatformError(
                f"TELEGRAM_WEBHOOK_URL was refused by Telegram ({exc.message}); it must be a public https "
                f"URL that reaches this server's {WEBHOOK_PATH}"
            ) from exc

    # -- receiving (inbound.Receiver) ---------------------------------------------------

    async def handle_webhook(self, request: web.Request) -> web.Response:
        return await self.receiver.handle_webhook(request)

    async def intake(self, update: Update) -> None:
        await self.receiver.intake(update)

    async def _migrate(self, old_chat: int, new_chat: int) -> None:
        await self.core.migrate_conversation(PLATFORM, str(old_chat), str(new_chat))

    # -- Platform (called back by the core) ---------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        async with retried_here():
            return await self.sender.send_reply(message, reply, self.me.username if self.me else "")

    async def is_admin(self, message: Message) -> bool:
        if message.is_dm:
            return True
        if message.author_id == message.conversation_id:
            return True  # an anonymous admin posts as the group itself
        try:
            member = await self.bot.get_chat_member(int(message.conversation_id), int(message.author_id))
        except TelegramAPIError as exc:
            log.warning("Telegram: getChatMember failed (%s); treating as not an admin", type(exc).__name__)
            return False
        return member.status in (ChatMemberStatus.CREATOR, ChatMemberStatus.ADMINISTRATOR)

    def live_reply(self, message: Message) -> LiveTarget | None:
        if message.is_dm:
            return DraftAnswer(self.sender, message, self.me.username if self.me else "")
        return EditedAnswer(self.sender, message, self.me.username if self.me else "")

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        chat = int(message.conversation_id)
        thread = int(message.thread_id) if message.thread_id and message.thread_id.isdigit() else None

        async def send() -> None:
            # Typing yields to real sends and 429 waits, and never uses the group's minute budget.
            if self.pacer.busy(chat):
                return
            async with self.pacer.slot(chat, fence=False, counted=False):
                await self.bot.send_chat_action(chat_id=chat, action=ChatAction.TYPING, message_thread_id=thread)

        async with keep_typing(send, TYPING_EVERY_S, "telegram"):
            yield
