"""core.Reply -> Slack Web API calls.

Where a reply goes:
- in the thread of the message it answers (`thread_ts` = the thread, or the message's own ts);
- `private` replies outside a DM are ephemeral (chat.postEphemeral; a slash command's
  `response_url` when the bot is not in that channel);
- a slash command has no message to thread under: its public answer goes to the channel;
- `Reply.file` (an export) is uploaded into the user's DM with the bot.

Retries are the SDK's: the Web API client's and the response_url client's `RetryHandler`s
(see adapters/slack/outbound.py) wait out 429s and retry connection and server errors.
Exactly once: every part already sent for a message is remembered (bounded, the kit's
`PartialSends`) and skipped if the reply is sent again — completed, never doubled. Across a crash, every posted part carries message `metadata`
(`mnemo_reply`, naming the message answered and the part): the worker that adopts the
message reads the thread back (`include_all_metadata`) and edits the parts already there
instead of posting them again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import mrkdwn
from adapters.slack.directory import Lru
from core.models import Message, Reply
from core.outbound import KeyedPacer, PartialSends, enter_fence
from core.render import render_chunks

log = logging.getLogger(__name__)

# Slack refuses posts from a bot that is not in the conversation with one of these.
_NOT_IN_CONVERSATION = {"channel_not_found", "not_in_channel", "user_not_in_channel", "is_archived"}
FILE_IN_DM_NOTE = "I sent the file to our DM."
METADATA_EVENT = "mnemo_reply"


class DmChannels:
    """conversations.open, cached: the bot's DM channel with each user."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._cache: Lru = Lru(5000)

    def known(self, user_id: str) -> str | None:
        """The DM channel if already looked up (no network call)."""
        found = self._cache.get(user_id)
        return None if found is None else str(found)

    async def with_user(self, user_id: str) -> str:
        if user_id not in self._cache:
            response = await self.client.conversations_open(users=user_id)
            self._cache.put(user_id, str((response.get("channel") or {})["id"]))
        return str(self._cache[user_id])


class ReplySender:
    def __init__(
        self,
        client: AsyncWebClient,
        dm_channels: DmChannels,
        pacer: KeyedPacer,
        max_chars: int,
        retry_handlers: Callable[[], list[AsyncRetryHandler]] = list,
    ) -> None:
        self.client = client
        self.dm_channels = dm_channels
        self.pacer = pacer
        self.max_chars = max_chars
        self.retry_handlers = retry_handlers  # for response_url posts, like the Web API client's
        # Parts of each reply already delivered (step name -> platform id).
        self.partial: PartialSends[dict[str, str]] = PartialSends(dict, size=2000)

    async def send(self, message: Message, reply: Reply) -> list[str]:
        done = self.partial.parts(message.event_key)
        is_slash = bool(message.reply_context.get("slash"))
        ephemeral = reply.private and not message.is_dm

        if reply.file is not None:
            await self._step(done, "file", lambda: self._upload_to_dm(message, reply))
            if not message.is_dm:
                reply = Reply(f"{reply.text}\n{FILE_IN_DM_NOTE}", reply.footnotes, reply.private, None,
                              reply.is_error)

        chunks = render_chunks(reply, self.max_chars, mrkdwn.escape, mrkdwn.link)
        if is_slash and not ephemeral and not message.is_dm and chunks:
            # Slack does not show the slash command itself, so a public answer says what it answers.
            chunks[0] = f"{_invocation(message)}\n{chunks[0]}"
        if message.reply_context.get("adopted") and not ephemeral:
            # A worker died while sending this reply: parts it posted are edited, not doubled.
            for index, ts in (await self.posted_parts(message)).items():
                done.setdefault(f"text{index}", f"adopted:{ts}")
        for index, chunk in enumerate(chunks):
            if ephemeral:
                await self._step(done, f"text{index}", partial(self._post_ephemeral, message, chunk))
            else:
                await self._step(done, f"text{index}", partial(self.post, message, chunk, index))
            posted = done[f"text{index}"]
            if posted.startswith("adopted:"):
                ts = posted.removeprefix("adopted:")
                await self.update(message, ts, chunk, index)
                done[f"text{index}"] = ts
        self.partial.done(message.event_key)
        return [sent for key, sent in done.items() if key.startswith("text")]

    async def posted_parts(self, message: Message) -> dict[int, str]:
        """The parts of the reply to `message` already in the conversation (part -> ts), read
        back through their metadata."""
        thread = self._thread_ts(message)
        try:
            if thread:
                response = await self.client.conversations_replies(
                    channel=message.conversation_id, ts=thread, include_all_metadata=True, limit=200
                )
            else:
                response = await self.client.conversations_history(
                    channel=message.conversation_id, include_all_metadata=True, limit=100
                )
        except SlackApiError as exc:
            log.warning("could not read back earlier replies (%s); sending whole", exc.response.get("error"))
            return {}
        found: dict[int, str] = {}
        for posted in response.get("messages") or []:
            metadata = posted.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == METADATA_EVENT and payload.get("message_key") == message.event_key:
                found[int(payload.get("part") or 0)] = str(posted["ts"])
        return found

    @staticmethod
    async def _step(done: dict[str, str], name: str, action: Callable[[], Awaitable[Any]]) -> None:
        if name in done:
            return  # delivered on an earlier attempt
        done[name] = str(await action())

    # -- destinations -------------------------------------------------------------------

    def _thread_ts(self, message: Message) -> str | None:
        if message.reply_context.get("slash"):
            return None  # a slash command is not a message: nothing to thread under
        return message.thread_id or message.message_id

    @staticmethod
    def metadata(message: Message, part: int) -> dict[str, Any]:
        return {"event_type": METADATA_EVENT, "event_payload": {"message_key": message.event_key, "part": part}}

    async def post(self, message: Message, text: str, part: int = 0) -> str:
        channel = message.conversation_id
        try:
            async with self.pacer.slot(channel):
                response = await self.client.chat_postMessage(
                    channel=channel,
                    text=text,
                    thread_ts=self._thread_ts(message),
                    unfurl_links=False,  # footnote links would otherwise unfurl into big previews
                    unfurl_media=False,
                    metadata=self.metadata(message, part),
                )
            return str(response.get("ts") or "")
        except SlackApiError as exc:
            response_url = str(message.reply_context.get("response_url") or "")
            if exc.response.get("error") in _NOT_IN_CONVERSATION and response_url:
                return await self._respond(response_url, text, "in_channel")
            raise

    async def update(self, message: Message, ts: str, text: str, part: int) -> str:
        async with self.pacer.slot(message.conversation_id):
            await self.client.chat_update(
                channel=message.conversation_id, ts=ts, text=text, metadata=self.metadata(message, part)
            )
        return ts

    async def delete(self, message: Message, ts: str) -> None:
        async with self.pacer.slot(message.conversation_id):
            await self.client.chat_delete(channel=message.conversation_id, ts=ts)

    async def _post_ephemeral(self, message: Message, text: str) -> str:
        channel = message.conversation_id
        try:
            async with self.pacer.slot(channel):
                response = await self.client.chat_postEphemeral(
                    channel=channel, user=message.author_id, text=text, thread_ts=self._thread_ts(message)
                )
            return str(response.get("message_ts") or "ephemeral")
        except SlackApiError as exc:
            if exc.response.get("error") not in _NOT_IN_CONVERSATION:
                raise
            response_url = str(message.reply_context.get("response_url") or "")
            if response_url:
                return await self._respond(response_url, text, "ephemeral")
            # Not in that channel and no response_url: say it in the DM instead, still private.
            dm = await self.dm_channels.with_user(message.author_id)
            async with self.pacer.slot(dm):
                response = await self.client.chat_postMessage(channel=dm, text=text)
            return str(response.get("ts") or "")

    async def _respond(self, response_url: str, text: str, response_type: str) -> str:
        """POST to a slash command's response_url (works where the bot is not a member)."""
        await enter_fence()
        webhook = AsyncWebhookClient(response_url, timeout=30, retry_handlers=self.retry_handlers())
        response = await webhook.send(text=text, response_type=response_type)
        if response.status_code >= 400:
            raise RuntimeError(f"response_url answered HTTP {response.status_code}")
        return f"response_url:{response_type}"

    async def _upload_to_dm(self, message: Message, reply: Reply) -> str:
        assert reply.file is not None
        dm = await self.dm_channels.with_user(message.author_id)
        async with self.pacer.slot(dm):
            response = await self.client.files_upload_v2(
                channel=dm,
                filename=reply.file.filename,
                content=reply.file.data,
                title=reply.file.filename,
            )
        file = response.get("file") or {}
        return str(file.get("id") or "file")


def retry_after(headers: Mapping[str, Any]) -> float:
    """Seconds from a Retry-After header (the SDK gives header values as lists); 1 if absent."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            first = value[0] if isinstance(value, list) and value else value
            try:
                return max(float(str(first)), 0.0)
            except ValueError:
                break
    return 1.0


def _invocation(message: Message) -> str:
    """`<@U1> asked: QUESTION` or `<@U1> used /mnemo settings`, for public slash-command answers."""
    who = f"<@{message.author_id}>"
    if message.text.startswith("/ask "):
        return f"{who} asked: {mrkdwn.escape(message.text.removeprefix('/ask ').strip())}"
    command = str(message.reply_context.get("command") or "/mnemo")
    return f"{who} used {mrkdwn.escape(command)} {mrkdwn.escape(message.text.lstrip('/'))}"
