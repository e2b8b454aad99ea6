"""The pipeline of one message (DESIGN.md "Data flow of one message").

submit: dedupe + store (before anything else) -> queue per conversation.
process: claim -> media -> remember -> decide -> recall -> answer -> send -> store reply.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core import commands, kinds, llm, outbound, streaming
from core.answer import ACKNOWLEDGED, Answerer, Source, build_prompt, cite, to_datetime, turn_line
from core.channel_settings import ChannelSettings, SettingsRepo
from core.config import CoreConfig
from core.errors import MediaError, MemoryUnavailable, ModelMisconfigured, ModelUnavailable
from core.facts import FactStore, fact_source, is_fact_id
from core.facts import arrange as arrange_facts
from core.learning import Learner
from core.media import MediaReader, MediaText
from core.memory.index import MemoryIndex, MemoryItem
from core.memory.rebuild import start_rebuild
from core.metrics import Metrics
from core.migrations import run_migrations
from core.models import Message, Reply, Scope, utcnow
from core.platform import Platform
from core.privacy import readable_scopes
from core.render import shorten
from core.store import DONE, FAILED, Store, message_doc
from core.tasks import OrderedRunner

log = logging.getLogger(__name__)

_MENTION = re.compile(r"(<@[!&]?\w+>|@\w+)")
MODEL_DOWN = "I couldn't reach the model; your message is saved. Please ask again in a moment."
EMPTY = "Your message was empty. Send me some text, a voice note or an image."
INTERRUPTED = (
    "I was interrupted while sending my answer to this message. If it didn't reach you, please ask "
    "again; your message is saved."
)
MEMORY_DOWN = "I can't reach my memory right now; your message is saved. Please ask again in a moment."
REREAD = "I was restarted before I could read your attachment; your message is saved. Please send the file again."
DELIVERY_ATTEMPTS = 4
GAVE_UP = "I couldn't finish answering this message after several tries. It is saved; please ask again."
# Series that exist from the start, so dashboards and alerts see zeros rather than gaps.
_COUNTERS = ("mnemo_messages_in_total", "mnemo_replies_out_total", "mnemo_duplicates_total",
             "mnemo_model_errors_total", "mnemo_send_failures_total", "mnemo_recovered_total",
             "mnemo_rate_limit_waits_total", "mnemo_rate_limit_wait_seconds_total", "mnemo_quarantined_total")


@dataclass(order=True)
class _Queued:
    """A message waiting its turn in its conversation on this worker. Ordered by the
    platform's timestamp, then by when it was stored: the same order `Store.earlier_pending`
    uses across workers, so local and cross-worker waits never wait on each other."""

    order_ts: float
    created_at: datetime
    seq: int
    message: Message = field(compare=False)
    stored: asyncio.Future[bool] = field(compare=False)  # True once it is in MongoDB
    done: asyncio.Future[None] = field(compare=False)  # what submit() returns
    started: float = field(compare=False, default_factory=time.monotonic)


def _ms(moment: datetime) -> datetime:
    """MongoDB keeps milliseconds: compare in-memory times at the stored precision."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


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
        self.facts = FactStore(store, index)
        self.learner = Learner(self)
        self.platforms: dict[str, Platform] = {}
        self.runner = OrderedRunner()
        self.metrics = Metrics()
        for name in _COUNTERS:
            self.metrics.inc(name, 0)
        # Which worker holds a message (MongoDB `owner`): workers share nothing but the stores.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.draining = False
        self._loops: list[asyncio.Task[None]] = []  # loops that take work: stopped first when draining
        self._heartbeat: asyncio.Task[None] | None = None
        self._queued: dict[str, list[_Queued]] = {}  # conversation -> heap of messages not yet taken
        self._seq = itertools.count()
        self._live: tuple[float, set[str]] | None = None  # (when read, live workers): see live_workers

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.config.lease_seconds)

    def register(self, platform: Platform) -> None:
        self.platforms[platform.name] = platform

    # -- what adapters may call besides submit (see core/platform.py) -------------------

    @property
    def pending_jobs(self) -> int:
        """Jobs queued or running (replies in flight): adapters wait on it before closing."""
        return self.runner.pending

    def run_in_conversation(self, conversation_key: str, job: Any) -> None:
        """Run `job` (an async callable) after the conversation's queued work, owned and
        awaited at shutdown like every other job."""
        self.runner.submit(conversation_key, job)

    async def amend_message(self, event_key: str, fields: dict[str, Any]) -> None:
        """Correct a stored message's metadata an adapter learned after storing it (author
        name, DM flag and scope, permalink)."""
        await self.store.amend_message(event_key, fields)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        await self.store.ensure_indexes()
        await self.facts.ensure_indexes()
        await run_migrations(self)
        await self.finish_deletions()  # forgets a crash interrupted: finished before any answer
        try:
            await self.index_pending()  # what was stored while Chroma could not be written
        except MemoryUnavailable as exc:
            log.warning("memory index unavailable at start-up: %s", exc)
        self._loops.append(await start_rebuild(self.store, self.index))  # a lost or stale Chroma
        if self.answerer.has_model or not getattr(self.index.embedder, "name", "").startswith("local:"):
            # litellm takes seconds to import; done lazily inside the first answer it would
            # block the event loop, and with it the lease heartbeat and every webhook.
            await asyncio.to_thread(llm.import_litellm)
            problem = self.answerer.check_configuration() if self.answerer.has_model else None
            if problem:
                log.error("model configuration: %s", problem)
            elif self.answerer.has_model:
                log.info("model configuration: %s", self.config.model)
        # The heartbeat says this worker is alive and renews the leases of every message it
        # holds. A worker that dies stops beating: within `worker_stale_seconds` (or at once,
        # when it was a process on this host) another worker adopts its messages.
        await self.store.beat(self.worker_id, list(self.platforms))
        beat_every = min(self.config.heartbeat_seconds, self.config.lease_seconds / 3)
        self._heartbeat = asyncio.create_task(self._every(beat_every, self.renew_leases), name="heartbeat")
        if background:
            self._loops.append(asyncio.create_task(self._every(3600, self.enforce_retention), name="retention"))
            self._loops.append(asyncio.create_task(self._every(beat_every, self.recover_stale), name="recovery"))
            self._loops.append(asyncio.create_task(self._every(30, self.finish_deletions), name="deletions"))
            self._loops.append(asyncio.create_task(self._every(30, self.index_pending), name="index-pending"))

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: take no new work, let in-flight work finish within `timeout`,
        then hand back whatever is left so another worker answers it at once."""
        self.draining = True
        self.metrics.gauge("mnemo_draining", 1)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self.runner.close(timeout)
        await self.learner.close(timeout)  # what was told is learned before the process exits
        try:
            released = await self.store.release(self.worker_id)
            if released:
                log.info("handed back %d unfinished messages", released)
        except Exception as exc:  # noqa: BLE001 - their leases expire anyway; another worker adopts them
            log.warning("could not hand back unfinished messages: %s", type(exc).__name__)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
            try:
                await self.store.stop_beating(self.worker_id)
            except Exception as exc:  # noqa: BLE001 - the heartbeat goes stale on its own
                log.warning("could not remove this worker's heartbeat: %s", type(exc).__name__)

    async def close(self, timeout: float = 30.0) -> None:
        await self.drain(timeout)
        await self.media.close()

    async def renew_leases(self) -> None:
        await self.store.beat(self.worker_id, list(self.platforms))
        await self.store.renew_leases(self.worker_id, self.lease)

    async def live_workers(self) -> set[str]:
        """Workers with a recent heartbeat, less those on this host whose process is gone (a
        `mnemo chat` killed a moment ago is dead now, not in `worker_stale_seconds`)."""
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < 1.0:
            return self._live[1]
        since = utcnow() - timedelta(seconds=self.config.worker_stale_seconds)
        live = {w for w in await self.store.recent_beats(since) if w == self.worker_id or not _dead_here(w)}
        live.add(self.worker_id)
        self._live = (now, live)
        return live

    def note_rate_limit(self, platform: str, seconds: float) -> None:
        """Adapters call this when a platform says 429 and they wait `seconds` before retrying."""
        self.metrics.inc("mnemo_rate_limit_waits_total", platform=platform)
        self.metrics.inc("mnemo_rate_limit_wait_seconds_total", seconds, platform=platform)

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
        message.text, message.author_name = storable(message.text), storable(message.author_name)
        if message.edited:
            await self.apply_edit(message)
            return None
        if not kinds.visible(message.text) and not message.attachments:
            # Nothing to store; say so where someone is talking to us.
            if message.is_dm or message.mentions_bot or message.is_command:
                platform = self.platforms.get(message.platform)
                if platform is not None:
                    await platform.send_reply(message, Reply(EMPTY, is_error=True))
            return None
        command = commands.parse(message.text)
        kind = kinds.classify(
            message.text, is_command=message.is_command, command_name=command.name if command else None,
            is_dm=message.is_dm, mentions_bot=message.mentions_bot, replies_to_bot=message.replies_to_bot,
            has_attachments=bool(message.attachments),
        )
        if kind == kinds.COMMAND:
            message.is_command = True
        doc = message_doc(message, remember=kind == kinds.TOLD, kind=kind)
        # order_ts: the platform's own time of the message, the conversation's order.
        doc.update(owner=self.worker_id, lease_until=utcnow() + self.lease, order_ts=message.ts.timestamp())
        if self.draining:
            await self.store.insert_message(doc)
            return None  # stored, not queued: handed back at the end of the drain
        # The message joins its conversation's queue before the insert, so a message stored
        # while an earlier one's insert is still in flight cannot overtake it.
        entry = self._enqueue(message, doc["order_ts"], doc["created_at"])
        try:
            inserted = await self.store.insert_message(doc)
        except BaseException:
            entry.stored.set_result(False)  # the caller sees the error; the entry is dropped
            raise
        entry.stored.set_result(inserted)
        if not inserted:
            # The unique event key in MongoDB decides, whichever worker the redelivery reached.
            self.metrics.inc("mnemo_duplicates_total", platform=message.platform)
            log.info("duplicate event ignored: %s", message.event_key)
            return None
        self.metrics.gauge("mnemo_queue_depth", self.runner.pending)
        return entry.done

    def _enqueue(self, message: Message, order_ts: float, created_at: datetime, stored: bool | None = None) -> _Queued:
        """Queue `message` in its conversation. The conversation's jobs run one at a time
        and each takes the earliest queued message, so a message that arrived late (slow
        intake, recovered after a crash) is still answered in the conversation's order."""
        loop = asyncio.get_running_loop()
        entry = _Queued(order_ts, _ms(created_at), next(self._seq), message, loop.create_future(), loop.create_future())
        if stored is not None:
            entry.stored.set_result(stored)
        heapq.heappush(self._queued.setdefault(message.conversation_key, []), entry)
        self.runner.submit(message.conversation_key, lambda: self._run_next(message.conversation_key))
        return entry

    async def _run_next(self, conversation_key: str) -> None:
        entry = heapq.heappop(self._queued[conversation_key])
        try:
            entry = await self._await_turn(conversation_key, entry)
            if entry.stored.result():
                await self.process(entry.message)
                await self._after_processing(entry.message)
                self.metrics.observe("mnemo_message_seconds", time.monotonic() - entry.started,
                                     platform=entry.message.platform)
        finally:
            if not entry.done.done():
                entry.done.set_result(None)
            if not self._queued.get(conversation_key):
                self._queued.pop(conversation_key, None)

    async def _after_processing(self, message: Message) -> None:
        """Withheld speech (opted out, `memory off`) is dropped once answered; the rest may
        teach Mnemo something (learned in the background, never in the reply's path)."""
        found = await self.store.messages.find_one({"key": message.event_key}, {"withheld": 1, "state": 1})
        if found is None:
            return
        if found.get("withheld"):
            if found.get("state") in (DONE, FAILED):
                await self.store.update_message(
                    found["_id"], {"text": "", "media_text": None, "media_kind": None, "attachments": []}
                )
            return
        self.learner.note(message)

    async def _await_turn(self, conversation_key: str, entry: _Queued) -> _Queued:
        """Per-conversation order across workers: while an earlier message of the conversation
        is pending anywhere, wait; if an earlier one joins this worker's queue meanwhile, take
        it instead. Bounded (a dead holder's messages are adopted within about 1.5 leases)."""
        deadline = time.monotonic() + 2 * self.config.lease_seconds
        pause = 0.02
        while True:
            if not await entry.stored:
                return entry
            queue = self._queued.get(conversation_key)
            if queue and queue[0] < entry:
                entry = heapq.heapreplace(queue, entry)
                continue
            earlier = await self.store.earlier_pending(
                conversation_key, entry.message.event_key, entry.order_ts, entry.created_at
            )
            if earlier is None:
                return entry
            if earlier.get("owner") not in await self.live_workers():
                # Its holder is dead: adopt it here (it joins this queue, ahead of this
                # entry), or, when it cannot be adopted here, it does not hold this one up.
                if not await self.recover_stale(conversation_key):
                    return entry
                continue
            if time.monotonic() > deadline:
                log.warning("an earlier message of %s is still pending; answering %s out of order",
                            conversation_key, entry.message.event_key)
                return entry
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def handle(self, message: Message) -> None:
        """Submit and wait until processed (console, tests)."""
        future = await self.submit(message)
        if future is not None:
            await future

    async def ingest_history(self, entries: list[tuple[Message, list[MediaText]]]) -> int:
        """Bulk import of past messages with their already-read media text: stored and
        remembered exactly as the pipeline does, in batches, without replying."""
        from core.memory.ingest import ingest_history

        return await ingest_history(self, entries)

    # -- processing ---------------------------------------------------------------------

    async def process(self, message: Message) -> None:
        platform = self.platforms.get(message.platform)
        if platform is None:
            log.error("no adapter registered for %s", message.platform)
            return
        doc = await self.store.claim(message.event_key, self.worker_id)
        if doc is None:
            return  # finished, or another worker adopted it
        if doc.get("interrupted_send") and not getattr(platform, "checks_posted", False):
            # A worker died while sending the answer: it may have arrived. Where the platform
            # cannot tell us what was posted (Telegram), sending it again could answer twice,
            # so the message is failed with a reply instead.
            await self._deliver(message, doc, platform, Reply(INTERRUPTED, is_error=True), state=FAILED)
            return
        if doc.get("interrupted_send"):
            message.reply_context["adopted"] = True  # answered whole; the adapter checks what was posted
        if doc["attempts"] > self.config.max_attempts:
            log.warning("message %s failed after %d attempts", doc["_id"], doc["attempts"] - 1)
            await self._deliver(message, doc, platform, Reply(GAVE_UP, is_error=True), state=FAILED)
            return
        try:
            reply = await self._work(message, doc, platform)
        except MemoryUnavailable as exc:
            log.error("memory index unavailable while answering %s: %s", doc["_id"], exc)
            self.metrics.inc("mnemo_memory_errors_total")
            await self._deliver(message, doc, platform, Reply(MEMORY_DOWN, is_error=True), state=FAILED)
            return
        except Exception:
            log.exception("processing failed for %s", message.event_key)
            reply = Reply("Something went wrong on my side; your message is saved.", is_error=True)
            await self._deliver(message, doc, platform, reply, state=FAILED)
            return
        if reply is None:
            await self.store.finish(doc["_id"], DONE, owner=self.worker_id, answered=False)
        else:
            await self._deliver(message, doc, platform, reply)

    async def _work(self, message: Message, doc: dict[str, Any], platform: Platform) -> Reply | None:
        command = commands.parse(message.text)
        kind = doc.get("kind", kinds.TOLD)
        if kind == kinds.COMMAND:
            if command is not None and command.name in commands.CONTROL:
                return await commands.run(self, message, platform, command)
            return commands.unknown(command) if command is not None else None

        settings = await self.settings.get(message.conversation_key)
        media_texts, media_error = await self._read_media(message, platform)
        if not message.attachments and doc.get("attachments"):
            # Adopted after a crash: the files are not at hand again, what was read of them is.
            if doc.get("media_text"):
                media_texts = [MediaText(doc.get("media_kind") or "file", doc["media_text"])]
            else:
                media_error = REREAD
        if media_texts:
            await self.store.update_message(
                doc["_id"],
                {"media_text": "\n".join(m.text for m in media_texts), "media_kind": media_texts[0].kind},
            )
        content = memory_text(message.text, media_texts)
        user = await self.store.get_user(message.user_key)
        remembered = False
        withheld = settings.memory != "on" or bool(user.get("opted_out"))
        if withheld:
            # Kept only while answering needs it: never indexed, learned, listed or exported.
            await self.store.update_message(doc["_id"], {"withheld": True})
        elif content.strip() and kinds.small_talk_reply(content) is None and doc["remember"]:
            try:
                await self.index.add([self._memory_item(doc, content, media_texts)])
                await self.store.update_message(doc["_id"], {"remembered": True})
                remembered = True
            except MemoryUnavailable as exc:
                # Stored, not yet indexed: `index_pending` has it indexed when Chroma is back.
                log.error("memory index unavailable; %s is stored, indexed later: %s", doc["_id"], exc)
                self.metrics.inc("mnemo_memory_errors_total")
                await self.store.update_message(doc["_id"], {"index_pending": True})

        addressed = self._addressed(message, settings, command)
        if not addressed:
            return None
        if media_error:
            return Reply(media_error, is_error=True)
        said = self._question(message, command, media_texts)
        if kind == kinds.TOLD and not kinds.is_question(said, searches=not media_texts):
            # Something told (a statement, a voice note, a photo): acknowledged, not answered.
            if media_texts:
                if not remembered:
                    return Reply(_not_remembering(settings.memory == "off"))
                note = Source(1, doc["_id"], message.author_name, message.ts, content, message.link,
                              media_texts[0].kind)
                return Reply(media_acknowledgement(media_texts), [note.footnote()])
            if message.attachments:
                return Reply("I couldn't read that attachment.")
            return await self.acknowledge(message, said, remembered, settings)
        if not said:
            return Reply(EMPTY)
        reasoning = settings.mode == "reasoning" or (command is not None and command.name == "deep")
        # A question never cites itself; a photo asked about ("what does this say?") may.
        itself = None if any(m.kind == "image" for m in media_texts) else doc["_id"]
        return await self.answer(message, said, settings, exclude_id=itself, reasoning=reasoning)

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
                texts.append(await self.media.fetch_and_read(attachment, cap))
            except MediaError as exc:
                error = str(exc)
                self.metrics.inc("mnemo_media_errors_total", kind=attachment.kind)
        return texts, error

    def _memory_item(self, doc: dict[str, Any], content: str, media: list[MediaText]) -> MemoryItem:
        return MemoryItem(
            memory_id=doc["_id"],
            scope=Scope.parse(doc["scope"]),
            text=content,
            author=doc["author_name"],
            ts=to_datetime(doc["ts"]).timestamp(),
            source_kind=media[0].kind if media else "text",  # a captioned photo is still an image
            conversation_key=doc["conversation_key"],
            author_key=doc["author_key"],
        )

    # -- answering ----------------------------------------------------------------------

    async def recall(
        self, message: Message, query: str, k: int, exclude_id: str | None = None,
        turns: list[dict[str, Any]] | None = None,
    ) -> list[Source]:
        """Top memories for `query` within the scopes this conversation may read. A follow-up
        ("why?", "and the second one?") that finds nothing by itself is searched together with
        what was said before it in `turns`."""
        sources = await self._recall(message, query, k, exclude_id)
        if not sources and turns and _is_follow_up(query):
            earlier = next((t for t in reversed(turns) if t.get("kind") != kinds.REPLY), None)
            if earlier is not None and earlier.get("text"):
                sources = await self._recall(message, f"{earlier['text']} {query}", k, exclude_id)
        return sources

    async def _recall(self, message: Message, query: str, k: int, exclude_id: str | None) -> list[Source]:
        scopes = readable_scopes(message)
        hits = []
        for scope in scopes:
            # 2k: messages a recalled fact carries are left out (core.facts.arrange)
            hits.extend(await self.index.search(scope, query, 2 * k + 1, now=message.ts.timestamp()))
        hits.sort(key=lambda h: h.score, reverse=True)
        ids = [h.memory_id for h in hits if h.memory_id != exclude_id]
        docs = await self.store.messages_by_ids(ids, scopes)
        # Learned facts are memories too (core.facts): current ones, history only for the past.
        facts = await self.facts.by_ids([i for i in ids if is_fact_id(i)], scopes)
        scores = {h.memory_id: h.score for h in hits}
        arranged = await arrange_facts(self.facts, ids, docs, facts, query, scopes, scores)
        said = await self.facts.source_messages([doc for kind, doc in arranged if kind == "fact"])
        sources: list[Source] = []
        for kind, found in arranged:
            if kind == "fact":
                sources.append(fact_source(len(sources) + 1, found, said))
                if len(sources) == k:
                    break
                continue
            memory_id = found["_id"]
            media_kind = found.get("media_kind")
            text = memory_text(found["text"], [MediaText(media_kind, found["media_text"])] if media_kind else [])
            kind = media_kind or "text"
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
        turns = await self.store.recent_turns(message, self.config.context_turns)
        if not self.answerer.has_model:
            sources = await self.recall(message, question, self.config.retrieval_only_k, exclude_id, turns)
            explain = await self.store.first_time(message.conversation_key, "retrieval_only")
            return self.answerer.retrieval_only(sources, explain)
        sources = await self.recall(message, question, self.config.recall_k, exclude_id, turns)
        prompt = build_prompt(
            question, message.author_name, sources, self._turn_lines(turns), bot_name=self.config.bot_name,
            platform=message.platform, is_dm=message.is_dm, persona=settings.persona, now=utcnow(),
        )
        return await self._model_reply(message, prompt, sources, settings, reasoning)

    async def _model_reply(
        self, message: Message, prompt: list[dict[str, str]], sources: list[Source], settings: ChannelSettings,
        reasoning: bool,
    ) -> Reply:
        """Call the model, streamed into the conversation where the platform and the channel's
        `streaming` setting allow (see core.streaming); the Reply is the same either way."""
        platform = self.platforms[message.platform]
        keep_markers = settings.citations == "on"
        outbound.use_fence(self._fence(message))
        live = streaming.open_live(platform, message, enabled=settings.streaming == "on")
        started = time.monotonic()
        try:
            async with platform.typing(message):
                if live is None:
                    raw = await self.answerer.complete(prompt, reasoning=reasoning)
                else:
                    raw = await live.run(
                        self.answerer.stream(prompt, reasoning=reasoning),
                        lambda text: streaming.preview_text(text, sources, keep_markers),
                    )
        except ModelUnavailable as exc:
            self.metrics.inc("mnemo_model_errors_total")
            return Reply(str(exc) if isinstance(exc, ModelMisconfigured) else MODEL_DOWN, is_error=True)
        finally:
            self.metrics.observe("mnemo_model_seconds", time.monotonic() - started,
                                 mode="reasoning" if reasoning else "fast")
        text, footnotes = cite(raw, sources, keep_markers=keep_markers)
        return Reply(text, footnotes)

    def _fence(self, message: Message) -> outbound.SendFence:
        """The send fence of `message` (one per answer: the stream and the final send share it)."""
        current = outbound.current_fence()
        if current is not None and current.key == message.event_key:
            return current
        return outbound.SendFence(message.event_key, lambda: self.store.fence_send(message.event_key, self.worker_id))

    async def acknowledge(self, message: Message, said: str, remembered: bool, settings: ChannelSettings) -> Reply:
        """A statement gets a short acknowledgement: one line without a model; with one, a
        natural short reply (told that this is a statement), never with footnotes."""
        small_talk = kinds.small_talk_reply(said)
        if small_talk is None and not remembered:
            return Reply(_not_remembering(settings.memory == "off"))
        if not self.answerer.has_model:
            return Reply(small_talk or ACKNOWLEDGED)
        turns = await self.store.recent_turns(message, self.config.context_turns)
        prompt = build_prompt(
            said, message.author_name, [], self._turn_lines(turns), bot_name=self.config.bot_name,
            platform=message.platform, is_dm=message.is_dm, persona=settings.persona, now=utcnow(), told=True,
        )
        started = time.monotonic()
        try:
            async with self.platforms[message.platform].typing(message):
                raw = await self.answerer.complete(prompt)
        except ModelUnavailable as exc:
            self.metrics.inc("mnemo_model_errors_total")
            return Reply(str(exc) if isinstance(exc, ModelMisconfigured) else MODEL_DOWN, is_error=True)
        finally:
            self.metrics.observe("mnemo_model_seconds", time.monotonic() - started, mode="fast")
        text, _ = cite(raw, [], keep_markers=False)  # no sources: any [n] is dropped
        return Reply(text or ACKNOWLEDGED)

    def _turn_lines(self, turns: list[dict[str, Any]]) -> list[str]:
        lines = []
        for turn in turns:
            if turn.get("kind") == kinds.REPLY:
                lines.append(turn_line(self.config.bot_name, turn.get("text") or ""))
                continue
            media = [MediaText(turn["media_kind"], turn["media_text"])] if turn.get("media_kind") else []
            said = memory_text(turn.get("text") or "", media)
            if said:
                lines.append(turn_line(turn["author_name"], said))
        return lines

    # -- delivery -----------------------------------------------------------------------

    async def _deliver(
        self, message: Message, doc: dict[str, Any], platform: Platform, reply: Reply, state: str = DONE
    ) -> None:
        live = streaming.take_live(message)
        fence = self._fence(message)
        outbound.use_fence(fence)
        sent: list[str] | None = None
        try:
            if not getattr(platform, "fences_sends", False):
                # A platform without the outbound kit: fence before handing it the reply.
                await fence.enter()
            for attempt in range(1, DELIVERY_ATTEMPTS + 1):
                try:
                    sent = await (live.finish(reply) if live is not None else platform.send_reply(message, reply))
                    break
                except outbound.Fenced:
                    raise
                except Exception as exc:
                    definite = not outbound.is_transient(exc)
                    log.warning("sending reply failed (attempt %d%s): %s", attempt, ", not retried" if definite else "",
                                type(exc).__name__, exc_info=definite)
                    if definite or attempt == DELIVERY_ATTEMPTS:
                        break
                    await asyncio.sleep(outbound.backoff(attempt, cap_s=10))
        except outbound.Fenced:
            # This worker stalled past its lease and another adopted the message.
            log.warning("message %s was adopted by another worker; not sending", doc["_id"])
            return
        finally:
            outbound.use_fence(None)
        if live is not None and sent is not None:
            self.metrics.inc("mnemo_stream_replies_total", platform=message.platform)
            self.metrics.inc("mnemo_stream_edits_total", live.updates + 1, platform=message.platform)
            self.metrics.observe("mnemo_stream_edits_per_reply", live.updates + 1, platform=message.platform)
            if live.first_visible_s is not None:
                self.metrics.observe("mnemo_stream_first_text_seconds", live.first_visible_s, platform=message.platform)
        if sent is None:
            self.metrics.inc("mnemo_send_failures_total", platform=message.platform)
            await self.store.finish(doc["_id"], FAILED, owner=self.worker_id, answered=False)
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
        await self.store.finish(doc["_id"], state, owner=self.worker_id, answered=True)

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
        await self.facts.move_scope(old_scope.key, new_scope.key, new_key)

    async def enforce_retention(self) -> int:
        """Delete memories older than each channel's `retention_days`. Returns how many."""
        removed = 0
        for conversation_key, days in await self.settings.all_with_retention():
            cutoff = utcnow() - timedelta(days=days)
            removed += await commands.delete_where(self, {"conversation_key": conversation_key, "ts": {"$lt": cutoff}})
        return removed

    async def quarantine(self, platform: str, event_id: str, payload: str | None, error: BaseException) -> None:
        """An event that can never be stored (not a transient error): kept aside with its
        error, logged with the traceback and counted, so the platform's intake moves on."""
        log.error("%s event %s cannot be stored; quarantined", platform, event_id, exc_info=error)
        self.metrics.inc("mnemo_quarantined_total", platform=platform)
        try:
            await self.store.quarantine(platform, event_id, payload, f"{type(error).__name__}: {error}"[:2000])
        except Exception as exc:  # noqa: BLE001 - the log line above is the record then
            log.warning("could not keep quarantined event %s: %s", event_id, type(exc).__name__)

    async def index_pending(self) -> int:
        """Index the messages stored while Chroma could not be written. Returns how many."""
        return await self.reindex({"index_pending": True})

    async def reindex(self, query: dict[str, Any] | None = None, progress: Any = None) -> int:
        """(Re)build the memory index from MongoDB, the source of truth: every remembered
        message (or those matching `query`), in batches; `progress(done, total)` after each."""
        query = query if query is not None else {"$or": [{"remembered": True}, {"index_pending": True}]}
        total = await self.store.messages.count_documents(query)
        done = 0
        batch: list[dict[str, Any]] = []
        async for found in self.store.messages.find(query).sort("ts", 1):
            batch.append(found)
            if len(batch) == 256:
                done += await self._index_docs(batch)
                batch = []
                if progress is not None:
                    progress(done, total)
        done += await self._index_docs(batch)
        if progress is not None:
            progress(done, total)
        return done

    async def _index_docs(self, docs: list[dict[str, Any]]) -> int:
        items = []
        for found in docs:
            media = [MediaText(found["media_kind"], found["media_text"])] if found.get("media_kind") else []
            content = memory_text(found["text"], media)
            if content.strip():
                items.append(self._memory_item(found, content, media))
        await self.index.add(items)
        await self.store.messages.update_many(
            {"_id": {"$in": [item.memory_id for item in items]}}, {"$set": {"remembered": True}}
        )
        await self.store.messages.update_many(
            {"_id": {"$in": [found["_id"] for found in docs]}}, {"$unset": {"index_pending": ""}}
        )
        return len(docs)

    async def finish_deletions(self) -> int:
        """Complete recorded deletions (forget, retention) that a crash or a Chroma outage
        interrupted. Returns how many were finished."""
        finished = 0
        for deletion in await self.store.pending_deletions():
            try:
                await commands.finish_deletion(self, deletion)
            except MemoryUnavailable as exc:
                log.warning("pending deletions wait for the memory index: %s", exc)
                break
            finished += 1
        if finished:
            log.info("finished %d interrupted deletions", finished)
        return finished

    async def recover_stale(self, conversation_key: str | None = None) -> int:
        """Adopt and process messages whose holder is gone (a crashed or killed worker, this
        process's own predecessor included, or one that handed them back on shutdown), of one
        conversation or of every registered platform. Returns how many."""
        if self.draining or not self.platforms:
            return 0
        adopted = await self.store.adopt_stale(
            self.worker_id, self.lease, list(self.platforms), await self.live_workers(), conversation_key
        )
        for found in adopted:
            message = message_from_doc(found)
            # Into the conversation's queue, in its place by timestamp (see _await_turn).
            self._enqueue(message, found.get("order_ts", message.ts.timestamp()), found["created_at"], stored=True)
        if adopted:
            self.metrics.inc("mnemo_recovered_total", len(adopted))
            log.info("adopted %d pending messages from stopped workers", len(adopted))
        return len(adopted)


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """Text as it can be stored: lone surrogates (undecodable code points some clients send)
    replaced by U+FFFD, which BSON's UTF-8 cannot hold otherwise."""
    return _SURROGATE.sub("\ufffd", text) if text else text


def _dead_here(worker_id: str) -> bool:
    """Whether `worker_id` (host:pid:token, see Core) names a process of this host that is gone."""
    host, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False


def media_acknowledgement(media: list[MediaText]) -> str:
    """A voice note or image without a question: say what was heard or read, so the person
    can tell whether it was understood."""
    first = media[0]
    said = shorten(first.text, 160)
    if not said:
        return f"Noted: I'll remember this {first.kind} [1]."
    verb = "Heard" if first.kind in ("voice", "audio") else f"Read in the {first.kind}"
    return f"{verb}: “{said}”. I'll remember it [1]."


_ANAPHORA = {"that", "it", "this", "those", "these", "them", "they", "he", "she", "him", "her", "one", "why",
             "so", "and", "there", "then", "more", "else"}


def _is_follow_up(question: str) -> bool:
    """A short question leaning on what came before ("why do you say that?", "and the second one?")."""
    words = re.findall(r"[\w']+", question.lower())
    return 0 < len(words) <= 8 and any(w in _ANAPHORA for w in words)


def _not_remembering(memory_off: bool) -> str:
    if memory_off:
        return "Noted, but memory is off in this channel, so I won't remember it."
    return "Noted, but you opted out of memory, so I won't remember it (/optin resumes)."


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
