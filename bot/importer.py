"""`mnemo import telegram|slack|discord PATH`: a chat-history export becomes cited memory.

The whole export is read and checked first (a malformed file stops everything before a single
write), then imported a chunk at a time: messages already imported are dropped cheaply, media
present in the export is read (voice transcribed, images read) through the core's media reader,
and the rest goes through the core's bulk path (`ingest_history`: the pipeline's documents,
scopes and dedupe on the event key, batched writes and embeddings). Running it twice, or again
after an interruption, imports each message exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bot.config import Settings, reveal
from bot.progress import ProgressBar
from core.errors import MediaError
from core.history import ExportError, History
from core.media import MediaText
from core.models import Message

log = logging.getLogger(__name__)

PLATFORMS = ("telegram", "slack", "discord")
CHUNK = 4096  # messages checked, read and handed to the bulk path at a time
_COMMAND = re.compile(r"^/[A-Za-z_]+(?:@\w+)?(?:\s|$)")
_READABLE = {"voice", "audio", "image"}


@dataclass
class Outcome:
    imported: int = 0
    already: int = 0
    reindexed: int = 0  # stored by an interrupted run but not yet indexed: indexed now
    commands: int = 0  # imported (kind "command"), never remembered
    learning_requests: int = 0  # model requests that learned facts from the import
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)  # "message <id>: <reason>"
    missing_media: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"mnemo import: {self.imported:,} messages imported, {self.already:,} already imported"]
        if self.reindexed:
            lines.append(f"  finished indexing {self.reindexed:,} messages an interrupted import had stored")
        if self.learning_requests:
            lines.append(f"  learned from it in {self.learning_requests:,} model requests (see /profile)")
        if self.commands:
            lines.append(f"  kept but not remembered: {self.commands:,} /commands")
        if self.skipped:
            parts = ", ".join(f"{count:,} {reason}" for reason, count in self.skipped.most_common())
            lines.append(f"  skipped: {parts}")
        if self.missing_media:
            shown = "; ".join(self.missing_media[:3]) + ("; ..." if len(self.missing_media) > 3 else "")
            lines.append(f"  media named but not in the export: {len(self.missing_media):,} ({shown})")
        if self.failed:
            lines.append(f"  failed: {len(self.failed):,}")
            lines += [f"    {reason}" for reason in self.failed[:20]]
            if len(self.failed) > 20:
                lines.append(f"    ... and {len(self.failed) - 20:,} more")
        return lines


def parse(platform: str, path: Path, workspace_url: str | None = None) -> History:
    """Read and check the whole export (raises ExportError naming the file and the spot)."""
    if platform == "telegram":
        from adapters.telegram.history import parse_export as telegram

        return telegram(path)
    if platform == "slack":
        from adapters.slack.history import parse_export as slack

        return slack(path, workspace_url)
    if platform == "discord":
        from adapters.discord.history import parse_export as discord

        return discord(path)
    raise ValueError(f"unknown platform {platform!r}")


def mark_commands(history: History) -> int:
    """`/commands` in history are kept (kind "command") but never remembered, as live."""
    count = 0
    for message in history.messages:
        if _COMMAND.match(message.text.lstrip()):
            message.is_command = True
            count += 1
    return count


async def run_import(settings: Settings, platform: str, path: Path, workspace_url: str | None = None,
                     stream: TextIO | None = None) -> int:
    """The command: parse and check everything, then import. Returns the exit code."""
    stream = stream or sys.stderr
    try:
        history = await asyncio.to_thread(parse, platform, path, workspace_url)
    except ExportError as exc:
        print(f"mnemo import: {exc}", file=stream)
        return 1
    print(f"mnemo import: {len(history.messages):,} messages to import from {path}", file=stream)

    from bot.app import open_core

    async with open_core(settings, background=False) as core:
        outcome = await import_history(core, settings, platform, history, stream)
    for line in outcome.summary():
        print(line, file=stream)
    return 0


async def import_history(core: Any, settings: Settings, platform: str, history: History, stream: TextIO) -> Outcome:
    """Import a parsed export into `core`, a chunk at a time, with a progress bar on `stream`."""
    outcome = Outcome(skipped=Counter(history.skipped), missing_media=list(history.missing_media),
                      commands=mark_commands(history))
    permalinks = None
    if platform == "slack" and not history.workspace_url and settings.slack_bot_token:
        permalinks = SlackPermalinks(settings)
    done = await _resume(core, {m.conversation_key for m in history.messages}, outcome)
    bar = ProgressBar(len(history.messages), stream=stream)
    try:
        for start in range(0, len(history.messages), CHUNK):
            await _import_chunk(core, history.messages[start:start + CHUNK], done, outcome, bar, permalinks)
    finally:
        if permalinks is not None:
            await permalinks.close()
    bar.finish()
    learner = getattr(core, "learner", None)
    if learner is not None and learner.enabled and outcome.imported:
        # What people told in the history teaches Mnemo about them, as live speech does.
        conversations = sorted({m.conversation_key for m in history.messages})
        print(f"mnemo import: learning facts from {len(conversations):,} conversations with {learner.model}",
              file=stream, flush=True)
        calls = learner.calls
        await _learn_with_progress(learner, conversations, outcome.imported, stream)
        outcome.learning_requests = learner.calls - calls
    return outcome


async def _learn_with_progress(learner: Any, conversations: list[str], total: int, stream: TextIO) -> None:
    """Learning a long history takes one model request per 40 messages: a bar of its own
    follows the messages the learner has read (its counter, looked at twice a second)."""
    bar = ProgressBar(total, label="messages read", stream=stream, prefix="learning")
    start = learner.messages_read

    async def follow() -> None:
        while True:
            await asyncio.sleep(0.5)
            bar.advance(learner.messages_read - start - bar.done)

    ticker = asyncio.create_task(follow(), name="learning-progress")
    try:
        await learner.flush(conversations)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    bar.advance(learner.messages_read - start - bar.done)
    bar.finish()


async def _resume(core: Any, conversations: set[str], outcome: Outcome) -> set[str]:
    """Event keys of these conversations already stored (one query per conversation, on its
    index: a per-chunk `$in` of thousands of keys is far slower). A run killed between storing
    a batch and indexing it left remembered messages missing from the index: they are indexed
    here, from their stored text, under their stored id."""
    from core.models import Scope
    from core.pipeline.documents import memory_text

    stored: set[str] = set()
    remembered: dict[str, list[str]] = {}  # scope -> ids
    for conversation in conversations:
        for doc in await core.store.stored_in_conversation(conversation):
            stored.add(doc["key"])
            if doc.get("remembered"):
                remembered.setdefault(doc["scope"], []).append(doc["_id"])
    unindexed: dict[str, list[str]] = {}  # scope -> ids
    for scope_key, ids in remembered.items():
        for start in range(0, len(ids), 5000):
            part = ids[start:start + 5000]
            indexed = set(await core.index.get_ids(Scope.parse(scope_key), part))
            unindexed.setdefault(scope_key, []).extend(memory_id for memory_id in part if memory_id not in indexed)
    for scope_key, ids in unindexed.items():
        for start in range(0, len(ids), 256):
            docs = await core.store.messages_by_id_in_scope(ids[start:start + 256], scope_key)
            items = []
            for doc in docs.values():
                media = [MediaText(doc["media_kind"], doc["media_text"])] if doc.get("media_kind") else []
                items.append(core._memory_item(doc, memory_text(doc["text"], media), media))
            await core.index.add(items)
    outcome.reindexed = sum(len(ids) for ids in unindexed.values())
    return stored


async def _import_chunk(core: Any, chunk: list[Message], done: set[str], outcome: Outcome, bar: ProgressBar,
                        permalinks: SlackPermalinks | None) -> None:
    from core.memory.ingest import ingest_history

    # What an earlier run stored is dropped before any work on it.
    todo = [m for m in chunk if m.event_key not in done]
    outcome.already += len(chunk) - len(todo)
    bar.advance(len(chunk) - len(todo))
    if permalinks is not None:
        await permalinks.fill(todo)
    media = await asyncio.gather(*(_read_media(core, m, outcome) for m in todo))

    def counted(messages: int, stored: int) -> None:
        outcome.imported += stored
        outcome.already += messages - stored
        bar.advance(messages)

    await ingest_history(core, list(zip(todo, media)), on_batch=counted)


async def _read_media(core: Any, message: Message, outcome: Outcome) -> list[MediaText]:
    texts: list[MediaText] = []
    for attachment in message.attachments:
        if attachment.kind not in _READABLE or (attachment.fetch is None and attachment.data is None):
            continue  # referenced (kept on the message), not read: as live for files
        try:
            texts.append(await core.media.fetch_and_read(attachment, core.config.max_file_bytes))
        except MediaError as exc:
            outcome.failed.append(f"message {message.message_id} ({attachment.filename}): {exc}")
        finally:
            attachment.data = None  # read once; the bytes are not kept
    return texts


class SlackPermalinks:
    """chat.getPermalink for every imported message, when a bot token is configured and no
    workspace URL is known (DESIGN: Slack exports carry no domain). A failed lookup falls back
    to the link built from the workspace URL auth.test reports."""

    def __init__(self, settings: Settings, concurrency: int = 8) -> None:
        from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
        from slack_sdk.web.async_client import AsyncWebClient

        self.client = AsyncWebClient(token=reveal(settings.slack_bot_token), base_url=settings.slack_api_base
                                     or "https://slack.com/api/")
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=5))  # honours Retry-After
        self._slots = asyncio.Semaphore(concurrency)
        self._team_url: str | None = None

    async def fill(self, messages: list[Message]) -> None:
        if self._team_url is None:
            try:
                self._team_url = str((await self.client.auth_test()).get("url") or "")
            except Exception as exc:  # noqa: BLE001 - links are a nicety; the import goes on
                log.warning("Slack auth.test failed; permalinks only where chat.getPermalink answers: %s",
                            type(exc).__name__)
                self._team_url = ""
        await asyncio.gather(*(self._one(m) for m in messages))

    async def _one(self, message: Message) -> None:
        from adapters.slack.events import constructed_permalink

        async with self._slots:
            try:
                found = await self.client.chat_getPermalink(channel=message.conversation_id,
                                                            message_ts=message.message_id)
                message.link = str(found.get("permalink") or "") or None
            except Exception as exc:  # noqa: BLE001 - fall back to the constructed link
                log.debug("chat.getPermalink failed: %s", type(exc).__name__)
        if message.link is None and self._team_url:
            message.link = constructed_permalink(self._team_url, message.conversation_id, message.message_id,
                                                 message.thread_id)

    async def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None:
            await session.close()
