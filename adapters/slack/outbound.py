"""core.Reply -> Slack, the Platform half of the adapter: sending (delivery.ReplySender),
streamed answers (live.EditedAnswer), the assistant status line as the typing indicator,
admin checks, and the SDK retry handlers that are the one retry layer of the Slack hop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.delivery import ReplySender, retry_after
from adapters.slack.directory import Users
from adapters.slack.live import EditedAnswer
from core.models import Message, Reply
from core.outbound import retried_here
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

RATE_LIMIT_RETRIES = 8  # a reply is delayed by a long limit, not dropped


class _CountedRateLimitRetries(AsyncRateLimitErrorRetryHandler):
    """The SDK's 429 handling (sleep for Retry-After, then retry the call), with each wait
    reported to the core's metrics (mnemo_rate_limit_waits_total)."""

    def __init__(self, report: Callable[[float], None], max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.report = report

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is not None:
            self.report(retry_after(response.headers))
        await super().prepare_for_next_attempt_async(state=state, request=request, response=response, error=error)


def retry_handlers(report_rate_limit: Callable[[float], None]) -> list[AsyncRetryHandler]:
    """Connection errors, 5xx and 429s, retried by the SDK itself (Web API and response_url)."""
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncServerErrorRetryHandler(max_retry_count=2),
        _CountedRateLimitRetries(report_rate_limit, max_retry_count=RATE_LIMIT_RETRIES),
    ]


class Outbound:
    """What the core calls back on Slack (the adapter's Platform methods delegate here)."""

    def __init__(self, client: AsyncWebClient, sender: ReplySender, users: Users) -> None:
        self.client = client
        self.sender = sender
        self.users = users
        self._status_unavailable = False

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        async with retried_here():
            return await self.sender.send(message, reply)

    async def is_admin(self, message: Message) -> bool:
        return await self.users.is_admin(message.author_id)

    def live_reply(self, message: Message) -> LiveTarget | None:
        if message.reply_context.get("slash") or message.is_command:
            return None  # slash commands answer through their own paths, sent whole
        return EditedAnswer(self.sender, message)

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        """Slack has no typing indicator for bots; in an assistant thread (a DM with an app
        that has the Agents & Assistants feature) its status line says Mnemo is thinking."""
        thread = message.thread_id or message.message_id
        if not message.is_dm or self._status_unavailable or message.reply_context.get("slash"):
            yield
            return
        shown = await self._set_status(message.conversation_id, thread, "is thinking…")
        try:
            yield
        finally:
            if shown:
                await self._set_status(message.conversation_id, thread, "")

    async def _set_status(self, channel: str, thread: str, status: str) -> bool:
        try:
            await self.client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread, status=status)
            return True
        except SlackApiError as exc:
            # Not an assistant app (or not such a thread): stop asking, say so once.
            self._status_unavailable = True
            log.info("Slack: no assistant status (%s); answering without it", exc.response.get("error"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("Slack: assistant status failed: %s", type(exc).__name__)
        return False
