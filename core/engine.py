"""The pipeline of one message (DESIGN.md "Data flow of one message").

submit: dedupe + store (before anything else) -> queue per conversation.
process: claim -> media -> remember -> decide -> recall -> answer -> send -> store reply.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import timedelta
from typing import Any

from core import commands
from core.answer import Answerer, Source, build_prompt, cite, to_datetime
from core.channel_settings import ChannelSettings, SettingsRepo
from core.config import CoreConfig
from core.errors import MediaError, ModelUnavailable
from core.media import MediaReader, MediaText
from core.memory.index import MemoryIndex, MemoryItem
from core.metrics import Metrics
from core.models import Attachment, Message, Reply, Scope, utcnow
from core.platform import Platform
from core.privacy import readable_scopes
from core.store import DONE, FAILED, Store, message_doc
from core.tasks import OrderedRunner

log = logging.getLogger(__name__)

_MENTION = re.compile(r"(<@[!&]?\w+>|@\w+)")
MODEL_DOWN = "I couldn't reach the model; your message is saved. Please ask again in a moment."
EMPTY = "Your message was empty. Send me some text, a voice note or an image."


class Core:
    def __init__(
        self,
        config: CoreConfig,
        store: Store,
        index: MemoryIndex,
        answerer: Answerer | None = None,
        media: MediaReader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.answerer = answerer or Answerer(config)
        self.media = media or MediaReader(config)
        self.settings = SettingsRepo(store)
        self.platforms: dict[str, Platform] = {}
        self.runner = OrderedRunner()
        self.metrics = Metrics()
        self._loops: list[asyncio.Task[None]] = []

    def register(self, platform: Platform) -> None:
        self.platforms[platform.name] = platform

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        await self.store.ensure_indexes()
        if background:
            self._loops.append(asyncio.create_task(self._every(3600, self.enforce_retention), name="retention"))
            self._loops.append(
                asyncio.create_task(self._every(self.config.lease_seconds / 2, self.recover_stale), name="recovery")
            )

    async def close(self, timeout: float = 30.0) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.runner.close(timeout)
        await self.media.close()

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))
            await asyncio.sleep(seconds)

    # -- intake -------------------------------------------------------------------------

    async def submit(self, message: Message) -> asyncio.Future[None] | None:
        """Store `message` and queue it. Returns a future done once it is processed, or
        None when it was already stored (a redelivered event: nothing happens twice)."""
        self.metrics.inc("mnemo_messages_in_total", platform=message.platform)
        if message.edited:
            await self.apply_edit(message)
            return None
        command = commands.parse(message.text)
        if command is not None and command.name in commands.CONTROL:
            message.is_command = True
        doc = message_doc(message, remember=not message.is_command)
        if not await self.store.insert_message(doc):
            self.metrics.inc("mnemo_duplicates_total", platform=message.platform)
            log.info("duplicate event ignored: %s", message.event_key)
            return None
        self.metrics.gauge("mnemo_queue_depth", self.runner.pending + 1)
        started = time.monotonic()

        async def job() -> None:
            await self.process(message)
            self.metrics.observe("mnemo_message_seconds", time.monotonic() - started, platform=message.platform)

        return self.runner.submit(message.conversation_key, job)

    async def handle(self, message: Message) -> None:
        """Submit and wait until processed (console, tests)."""
        future = await self.submit(message)
        if future is not None:
            await future

    # -- processing ---------------------------------------------------------------------

    async def process(self, message: Message) -> None:
        doc = await self.store.claim(message.event_key, timedelta(seconds=self.config.lease_seconds))
        if doc is None:
            return  # another worker has it, or it is finished
        platform = self.platforms.get(message.platform)
        if platform is None:
            log.error("no adapter registered for %s", message.platform)
            return
        try:
            reply = await self._work(message, doc, platform)
        except Exception:
            log.exception("processing failed for %s", message.event_key)
            reply = Reply("Something went wrong on my side; your message is saved.", is_error=True)
            await self._deliver(message, doc, platform, reply, state=FAILED)
            return
        if reply is None:
            await self.store.finish(doc["_id"], DONE, answered=False)
        else:
            await self._deliver(message, doc, platform, reply)

    async def _work(self, message: Message, doc: dict[str, Any], platform: Platform) -> Reply | None:
        command = commands.parse(message.text)
        if command is not None and command.name in commands.CONTROL:
            return await commands.run(self, message, platform, command)

        settings = await self.settings.get(message.conversation_key)
        media_texts, media_error = await self._read_media(message, platform)
        if media_texts:
            await self.store.update_message(
                doc["_id"],
                {"media_text": "\n".join(m.text for m in media_texts), "media_kind": media_texts[0].kind},
            )
        content = memory_text(message.text, media_texts)
        user = await self.store.get_user(message.user_key)
        if settings.memory == "on" and not user.get("opted_out") and content.strip() and doc["remember"]:
            await self.index.add([self._memory_item(doc, content, media_texts)])
            await self.store.update_message(doc["_id"], {"remembered": True})

        addressed = self._addressed(message, settings, command)
        if not addressed:
            return None
        if media_error:
            return Reply(media_error, is_error=True)
        question = self._question(message, command, media_texts)
        if not question:
            if media_texts:
                note = Source(1, doc["_id"], message.author_name, message.ts, content, message.link,
                              media_texts[0].kind)
                return Reply(f"Noted: I'll remember this {media_texts[0].kind} [1].", [note.footnote()])
            return Reply(EMPTY if not message.attachments else "I couldn't read that attachment.")
        reasoning = settings.mode == "reasoning" or (command is not None and command.name == "deep")
        return await self.answer(message, question, settings, exclude_id=doc["_id"], reasoning=reasoning)

    def _addressed(self, message: Message, settings: ChannelSettings, command: commands.Command | None) -> bool:
        if message.is_dm:
            return True
        if command is not None and command.name in ("ask", "deep"):
            return True
        if settings.respond_to == "off":
            return False
        if settings.respond_to == "all":
            return True
        return message.mentions_bot or message.replies_to_bot

    def _question(self, message: Message, command: commands.Command | None, media: list[MediaText]) -> str:
        text = command.args if command is not None and command.name in ("ask", "deep") else message.text
        if message.mentions_bot:
            text = _MENTION.sub(" ", text)
        text = " ".join(text.split())
        if not text:
            text = " ".join(m.text for m in media if m.kind in ("voice", "audio")).strip()
        return text

    async def _read_media(self, message: Message, platform: Platform) -> tuple[list[MediaText], str | None]:
        texts: list[MediaText] = []
        error: str | None = None
        cap = self.config.max_file_bytes
        if platform.limits.max_download_bytes is not None:
            cap = min(cap, platform.limits.max_download_bytes)
        for attachment in message.attachments:
            try:
                texts.append(await self._read_one(attachment, cap))
            except MediaError as exc:
                error = str(exc)
                self.metrics.inc("mnemo_media_errors_total", kind=attachment.kind)
        return texts, error

    async def _read_one(self, attachment: Attachment, cap: int) -> MediaText:
        if attachment.size is not None and attachment.size > cap:
            raise MediaError(
                f"“{attachment.filename}” is {attachment.size / 1_048_576:.1f} MB; I can read files up to "
                f"{cap / 1_048_576:.0f} MB. Your message is saved."
            )
        try:
            data = await attachment.read()
        except MediaError:
            raise
        except Exception as exc:
            log.warning("attachment download failed: %s", type(exc).__name__)
            raise MediaError(f"I couldn't download “{attachment.filename}”. Your message is saved.") from exc
        if len(data) > cap:
            raise MediaError(
                f"“{attachment.filename}” is {len(data) / 1_048_576:.1f} MB; I can read files up to "
                f"{cap / 1_048_576:.0f} MB. Your message is saved."
            )
        if not data:
            raise MediaError(f"“{attachment.filename}” is empty (0 bytes). Your message is saved.")
        return await self.media.read(attachment, data)

    def _memory_item(self, doc: dict[str, Any], content: str, media: list[MediaText]) -> MemoryItem:
        return MemoryItem(
            memory_id=doc["_id"],
            scope=Scope.parse(doc["scope"]),
            text=content,
            author=doc["author_name"],
            ts=to_datetime(doc["ts"]).timestamp(),
            source_kind=media[0].kind if media and not doc["text"].strip() else "text",
            conversation_key=doc["conversation_key"],
            author_key=doc["author_key"],
        )

    # -- answering ----------------------------------------------------------------------

    async def recall(self, message: Message, query: str, k: int, exclude_id: str | None = None) -> list[Source]:
        """Top memories for `query` within the scopes this conversation may read."""
        scopes = readable_scopes(message)
        hits = []
        for scope in scopes:
            hits.extend(await self.index.search(scope, query, k + 1))
        hits.sort(key=lambda h: h.score, reverse=True)
        ids = [h.memory_id for h in hits if h.memory_id != exclude_id]
        docs = await self.store.messages_by_ids(ids, scopes)
        sources: list[Source] = []
        for memory_id in ids:
            found = docs.get(memory_id)
            if found is None:
                continue  # forgotten or out of scope: never shown
            media_kind = found.get("media_kind")
            text = memory_text(found["text"], [MediaText(media_kind, found["media_text"])] if media_kind else [])
            kind = media_kind if media_kind and not found["text"].strip() else "text"
            sources.append(
                Source(len(sources) + 1, memory_id, found["author_name"], to_datetime(found["ts"]), text,
                       found.get("link"), kind)
            )
            if len(sources) == k:
                break
        return sources

    async def answer(
        self, message: Message, question: str, settings: ChannelSettings, exclude_id: str | None, reasoning: bool
    ) -> Reply:
        if not self.answerer.has_model:
            return self.answerer.retrieval_only(
                await self.recall(message, question, self.config.retrieval_only_k, exclude_id)
            )
        sources = await self.recall(message, question, self.config.recall_k, exclude_id)
        recent = await self.store.recent_in_scope(message.scope, message.conversation_key, 6, before=message.ts)
        recent_lines = [f"{d['author_name']}: {' '.join(d['text'].split())[:300]}" for d in recent if d["text"]]
        prompt = build_prompt(
            question, message.author_name, sources, recent_lines, bot_name=self.config.bot_name,
            platform=message.platform, is_dm=message.is_dm, persona=settings.persona, now=utcnow(),
        )
        platform = self.platforms[message.platform]
        try:
            async with platform.typing(message):
                raw = await self.answerer.complete(prompt, reasoning=reasoning)
        except ModelUnavailable:
            self.metrics.inc("mnemo_model_errors_total")
            return Reply(MODEL_DOWN, is_error=True)
        text, footnotes = cite(raw, sources, keep_markers=settings.citations == "on")
        return Reply(text, footnotes)

    # -- delivery -----------------------------------------------------------------------

    async def _deliver(
        self, message: Message, doc: dict[str, Any], platform: Platform, reply: Reply, state: str = DONE
    ) -> None:
        sent: list[str] | None = None
        for attempt in range(4):
            try:
                sent = await platform.send_reply(message, reply)
                break
            except Exception as exc:
                log.warning("sending reply failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                await asyncio.sleep(min(2**attempt, 10))
        if sent is None:
            self.metrics.inc("mnemo_send_failures_total", platform=message.platform)
            await self.store.finish(doc["_id"], FAILED, answered=False)
            return
        self.metrics.inc("mnemo_replies_out_total", platform=message.platform)
        await self.store.insert_reply(
            {
                "message_key": message.event_key,
                "conversation_key": message.conversation_key,
                "author_key": message.user_key,
                "text": reply.text,
                "footnotes": [
                    {"number": f.number, "memory_id": f.memory_id, "author": f.author, "quote": f.quote}
                    for f in reply.footnotes
                ],
                "private": reply.private,
                "sent_ids": sent,
            }
        )
        await self.store.finish(doc["_id"], state, answered=True)

    # -- edits, migration, retention, recovery ------------------------------------------

    async def apply_edit(self, message: Message) -> None:
        """An edited message replaces its remembered text (same scope, same id)."""
        found = await self.store.get_message(message.event_key)
        if found is None:
            message.edited = False
            await self.submit(message)
            return
        await self.store.update_message(found["_id"], {"text": message.text, "edited_at": utcnow()})
        if found.get("remembered"):
            found["text"] = message.text
            media = [MediaText(found["media_kind"], found["media_text"])] if found.get("media_kind") else []
            await self.index.add([self._memory_item(found, memory_text(message.text, media), media)])

    async def migrate_conversation(self, platform: str, old_id: str, new_id: str) -> None:
        """A conversation changed id (Telegram group -> supergroup): keep memory and settings."""
        old_key, new_key = f"{platform}:{old_id}", f"{platform}:{new_id}"
        old_scope, new_scope = Scope("group", platform, old_id), Scope("group", platform, new_id)
        await self.settings.move(old_key, new_key)
        docs = [d async for d in self.store.messages.find({"scope": old_scope.key})]
        await self.store.messages.update_many(
            {"scope": old_scope.key},
            {"$set": {"scope": new_scope.key, "conversation_key": new_key, "conversation_id": new_id}},
        )
        items = []
        for found in docs:
            found.update(scope=new_scope.key, conversation_key=new_key)
            if found.get("remembered"):
                media = [MediaText(found["media_kind"], found["media_text"])] if found.get("media_kind") else []
                items.append(self._memory_item(found, memory_text(found["text"], media), media))
        await self.index.add(items)
        await self.index.delete(old_scope, [d["_id"] for d in docs])

    async def enforce_retention(self) -> int:
        """Delete memories older than each channel's `retention_days`. Returns how many."""
        removed = 0
        for conversation_key, days in await self.settings.all_with_retention():
            cutoff = utcnow() - timedelta(days=days)
            removed += await commands.delete_where(self, {"conversation_key": conversation_key, "ts": {"$lt": cutoff}})
        return removed

    async def recover_stale(self) -> int:
        """Process messages a crashed worker left behind (received or lease-expired)."""
        older = utcnow() - timedelta(seconds=self.config.lease_seconds)
        recovered = 0
        for found in await self.store.stale_messages(older):
            if found["platform"] not in self.platforms:
                continue
            message = message_from_doc(found)
            self.runner.submit(message.conversation_key, lambda m=message: self.process(m))
            recovered += 1
        return recovered


def memory_text(text: str, media: list[MediaText]) -> str:
    parts = [text.strip()] if text.strip() else []
    parts += [m.text.strip() for m in media if m.text.strip()]
    return "\n".join(parts)


def message_from_doc(doc: dict[str, Any]) -> Message:
    """Rebuild a message from its stored document (crash recovery). Attachments are not
    re-downloaded: their text, if read, is already stored."""
    return Message(
        platform=doc["platform"], conversation_id=doc["conversation_id"], message_id=doc["message_id"],
        author_id=doc["author_id"], author_name=doc["author_name"], text=doc["text"], is_dm=doc["is_dm"],
        ts=to_datetime(doc["ts"]), thread_id=doc.get("thread_id"), mentions_bot=doc.get("mentions_bot", False),
        replies_to_bot=doc.get("replies_to_bot", False), link=doc.get("link"),
        is_command=doc.get("is_command", False),
    )
