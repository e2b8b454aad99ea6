"""The Telegram adapter: receives updates (long polling, or a webhook on the shared HTTP
server), hands them to the core as `core.Message`s, and delivers the core's replies."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction, ChatMemberStatus
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand, Update
from aiogram.utils.token import TokenValidationError, validate_token
from aiohttp import web
from pydantic import ValidationError

from adapters.telegram.inbound import PLATFORM, BotIdentity, to_core_message
from adapters.telegram.live import DraftAnswer, EditedAnswer
from adapters.telegram.outbound import MAX_MESSAGE_CHARS, Sender, new_pacer
from core.engine import Core
from core.errors import FatalPlatformError, is_transient
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, keep_typing
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message"]
GETFILE_CAP_BYTES = 20 * 1024 * 1024  # the official Bot API's download limit
TYPING_EVERY_S = 4.0  # Telegram shows a chat action for about 5 seconds
SEEN_UPDATES = 10_000

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

T = TypeVar("T")


class _Stopped(Exception):
    pass


class TelegramAdapter:
    name = PLATFORM
    fences_sends = True  # every send goes through the pacer, which fences right before the call
    checks_posted = False  # the Bot API cannot list what the bot sent: an interrupted send apologises

    def __init__(
        self,
        core: Core,
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
        self.poll_timeout_s = poll_timeout_s
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
        self.me: BotIdentity | None = None
        self.pacer = pacer or new_pacer()
        self.sender = Sender(self.bot, self.pacer, self._migrate,
                             on_rate_limit=lambda seconds: core.note_rate_limit(PLATFORM, seconds))
        self._stopping = asyncio.Event()
        self._receiving = False  # run() is between start and return
        self._seen_updates: OrderedDict[int, None] = OrderedDict()

    # -- lifecycle ----------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", WEBHOOK_PATH, self.handle_webhook)] if self.webhook_url else []

    async def run(self) -> None:
        if self._token_problem:
            raise FatalPlatformError(self._token_problem)
        self._receiving = True
        try:
            await self._receive()
        except _Stopped:
            pass
        finally:
            self._receiving = False

    async def _receive(self) -> None:
        me = await self._until_stopped(self._get_me())
        self.me = BotIdentity(me.id, me.username or "")
        log.info("Telegram: connected as @%s (%s)", self.me.username, "webhook" if self.webhook_url else "polling")
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
                await self._until_stopped(self.bot.delete_webhook(drop_pending_updates=False))
            except TelegramAPIError as exc:  # getUpdates will say so if a webhook is really in the way
                log.warning("Telegram: deleteWebhook failed (%s)", type(exc).__name__)
            await self._poll()

    async def stop(self) -> None:
        self._stopping.set()
        # The receive loop notices at once; let it finish before its connection closes.
        for _ in range(50):
            if not self._receiving:
                break
            await asyncio.sleep(0.1)
        # Let replies already queued reach people before the connection closes.
        for _ in range(100):
            if self.core.pending_jobs == 0:
                break
            await asyncio.sleep(0.1)
        await self.bot.session.close()

    async def _get_me(self) -> Any:
        """getMe until it answers: Telegram down at start-up is retried with backoff, one line
        per attempt. The loop itself checks for stop(): a cancellation that lands while the
        pause is ending can be swallowed (asyncio.wait_for before 3.12), and a loop that only
        paused would then spin on instant failures, logging thousands of lines a second."""
        delay = 1.0
        while True:
            if self._stopping.is_set():
                raise _Stopped
            try:
                return await self.bot.get_me()
            except TelegramUnauthorizedError as exc:
                raise FatalPlatformError(
                    "TELEGRAM_BOT_TOKEN was rejected by Telegram (401 Unauthorized): copy the token from "
                    "@BotFather again, or /revoke and use the new one"
                ) from exc
            except TelegramAPIError as exc:
                log.warning("Telegram: getMe failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await self._pause(delay)
                delay = min(delay * 2, 30)

    async def _set_webhook(self) -> None:
        assert self.webhook_url is not None
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.bot.set_webhook(
                    self.webhook_url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES,
                    drop_pending_updates=False,
                )
                return
            except TelegramBadRequest as exc:
                raise FatalPlatformError(
                    f"TELEGRAM_WEBHOOK_URL was refused by Telegram ({exc.message}); it must be a public https "
                    f"URL that reaches this server's {WEBHOOK_PATH}"
                ) from exc
            except TelegramAPIError as exc:
                log.warning("Telegram: setWebhook failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await self._pause(delay)
                delay = min(delay * 2, 30)

    async def _until_stopped(self, work: Awaitable[T]) -> T:
        """Await `work` unless stop() is called first (a long poll must not delay shutdown)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise _Stopped
        return task.result()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up for stop()."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- receiving ----------------------------------------------------------------------

    async def _poll(self) -> None:
        offset: int | None = None
        delay = 1.0
        while not self._stopping.is_set():
            try:
                updates = await self._until_stopped(
                    self.bot.get_updates(offset=offset, timeout=self.poll_timeout_s, allowed_updates=ALLOWED_UPDATES)
                )
            except _Stopped:
                return
            except TelegramUnauthorizedError as exc:
                raise FatalPlatformError("TELEGRAM_BOT_TOKEN was rejected by Telegram (401 Unauthorized)") from exc
            except TelegramConflictError:
                log.warning("Telegram: another process is receiving this bot's updates (a second `mnemo run`?)")
                await self._pause(delay)
                delay = min(delay * 2, 30)
                continue
            except TelegramAPIError as exc:
                log.warning("Telegram: getUpdates failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await self._pause(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1.0
            for update in updates:
                if not await self._intake_until_stored(update):
                    return  # stopping: the update stays unconfirmed and comes again next start
                # Confirmed (by the next getUpdates offset) only after the core has stored it.
                offset = update.update_id + 1

    async def _intake_until_stored(self, update: Update) -> bool:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.intake(update)
                return True
            except Exception as exc:  # noqa: BLE001 - transient: keep the update, try again; else quarantine
                if not is_transient(exc):
                    await self._quarantine(update, exc)
                    return True  # confirmed: one bad update never stops every chat's intake
                log.warning("Telegram: storing update %s failed (%s); retrying", update.update_id, type(exc).__name__)
                await self._pause(delay)
                delay = min(delay * 2, 30)
        return False

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
            if not is_transient(exc):
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
                await self._migrate(tg.chat.id, tg.migrate_to_chat_id)
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

    async def _migrate(self, old_chat: int, new_chat: int) -> None:
        await self.core.migrate_conversation(PLATFORM, str(old_chat), str(new_chat))

    # -- Platform (called back by the core) ---------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
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
