"""Intake: dedupe and store a message before anything else, then queue it in its conversation,
in the conversation's order, on this worker and across workers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from core import commands, kinds
from core.models import Message, Reply, utcnow
from core.pipeline.documents import memory_item, memory_text, storable, storable_context, stored_media
from core.pipeline.process import EMPTY, Processor
from core.pipeline.turns import TurnSignals
from core.pipeline.worker import Worker
from core.services import Services
from core.store import message_doc

log = logging.getLogger(__name__)


@dataclass(order=True)
class Queued:
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


class Intake:
    def __init__(self, services: Services, processor: Processor, worker: Worker, turns: TurnSignals) -> None:
        self.services = services
        self.processor = processor
        self.worker = worker
        self.turns = turns
        self._queued: dict[str, list[Queued]] = {}  # conversation -> heap of messages not yet taken
        self._seq = itertools.count()

    async def submit(self, message: Message) -> asyncio.Future[None] | None:
        """Store `message` and queue it. Returns a future done once it is processed, or
        None when it was already stored (a redelivered event: nothing happens twice)."""
        s = self.services
        s.metrics.inc("mnemo_messages_in_total", platform=message.platform)
        message.text, message.author_name = storable(message.text), storable(message.author_name)
        if message.edited:
            await self.apply_edit(message)
            return None
        if not kinds.visible(message.text) and not message.attachments:
            # Nothing to store; say so where someone is talking to us.
            if message.is_dm or message.mentions_bot or message.is_command:
                platform = s.platforms.get(message.platform)
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
        # reply_context: so that a message adopted after a crash is answered where it would have been.
        doc.update(owner=s.worker_id, lease_until=utcnow() + s.lease, order_ts=message.ts.timestamp(),
                   reply_context=storable_context(message.reply_context))
        if s.draining:
            await s.store.insert_message(doc)
            return None  # stored, not queued: handed back at the end of the drain
        # The message joins its conversation's queue before the insert, so a message stored
        # while an earlier one's insert is still in flight cannot overtake it.
        entry = self.enqueue(message, doc["order_ts"], doc["created_at"], stored=None)
        try:
            inserted = await s.store.insert_message(doc)
        except BaseException:
            entry.stored.set_result(False)  # the caller sees the error; the entry is dropped
            raise
        entry.stored.set_result(inserted)
        if not inserted:
            # The unique event key in MongoDB decides, whichever worker the redelivery reached.
            s.metrics.inc("mnemo_duplicates_total", platform=message.platform)
            log.info("duplicate event ignored: %s", message.event_key)
            return None
        s.metrics.gauge("mnemo_queue_depth", s.runner.pending)
        return entry.done

    async def apply_edit(self, message: Message) -> None:
        """An edited message replaces its stored text at once (store first); its memory is
        re-indexed as a job in its conversation's queue, after whatever of the conversation is
        queued before it, so the original's processing can never index the old text last. A
        message still queued is answered with its new text (processing reads the document)."""
        s = self.services
        found = await s.store.get_message(message.event_key)
        if found is None:
            message.edited = False
            await self.submit(message)
            return
        await s.store.update_message(found["_id"], {"text": message.text, "edited_at": utcnow()})
        s.runner.submit(message.conversation_key, lambda: self._reindex_edited(message.event_key))

    async def _reindex_edited(self, event_key: str) -> None:
        s = self.services
        found = await s.store.get_message(event_key)
        if found is not None and found.get("remembered"):
            media = stored_media(found)
            await s.index.add([memory_item(found, memory_text(found["text"], media), media)])

    def enqueue(self, message: Message, order_ts: float, created_at: datetime, stored: bool | None = True) -> Queued:
        """Queue `message` in its conversation. The conversation's jobs run one at a time
        and each takes the earliest queued message, so a message that arrived late (slow
        intake, recovered after a crash) is still answered in the conversation's order."""
        loop = asyncio.get_running_loop()
        entry = Queued(order_ts, _ms(created_at), next(self._seq), message, loop.create_future(), loop.create_future())
        if stored is not None:
            entry.stored.set_result(stored)
        heapq.heappush(self._queued.setdefault(message.conversation_key, []), entry)
        self.turns.notify(message.conversation_key)  # it may be earlier than the one waiting
        self.services.runner.submit(message.conversation_key, lambda: self._run_next(message.conversation_key))
        return entry

    async def _run_next(self, conversation_key: str) -> None:
        entry = heapq.heappop(self._queued[conversation_key])
        try:
            entry = await self.await_turn(conversation_key, entry)
            if entry.stored.result():
                await self.processor.process(entry.message)
                self.services.metrics.observe("mnemo_message_seconds", time.monotonic() - entry.started,
                                              platform=entry.message.platform)
        finally:
            if not entry.done.done():
                entry.done.set_result(None)
            if not self._queued.get(conversation_key):
                self._queued.pop(conversation_key, None)

    async def await_turn(self, conversation_key: str, entry: Queued) -> Queued:
        """Per-conversation order across workers: while an earlier message of the conversation
        is pending anywhere, wait; if an earlier one joins this worker's queue meanwhile, take
        it instead. Bounded (a dead holder's messages are adopted within about 1.5 leases)."""
        s = self.services
        deadline = time.monotonic() + 2 * s.config.lease_seconds
        pause = 0.02
        try:
            while True:
                entry, done = await self._look(conversation_key, entry, deadline)
                if done:
                    return entry
                await self.turns.wait(conversation_key, pause)
                pause = min(pause * 2, self.turns.max_pause)
        finally:
            self.turns.disarm(conversation_key)

    async def _look(self, conversation_key: str, entry: Queued, deadline: float) -> tuple[Queued, bool]:
        """One look for await_turn: (the entry to run or keep waiting with, whether to run it)."""
        s = self.services
        while True:
            self.turns.arm(conversation_key)  # a wake-up from here on ends the wait after this look
            if not await entry.stored:
                return entry, True
            queue = self._queued.get(conversation_key)
            if queue and queue[0] < entry:
                entry = heapq.heapreplace(queue, entry)
                continue
            earlier = await s.store.earlier_pending(
                conversation_key, entry.message.event_key, entry.order_ts, entry.created_at
            )
            if earlier is None:
                return entry, True
            if earlier.get("owner") not in await self.worker.live_workers():
                # Its holder is dead: adopt it here (it joins this queue, ahead of this
                # entry), or, when it cannot be adopted here, it does not hold this one up.
                if not await self.worker.recover_stale(conversation_key):
                    return entry, True
                continue
            if time.monotonic() > deadline:
                log.warning("an earlier message of %s is still pending; answering %s out of order",
                            conversation_key, entry.message.event_key)
                return entry, True
            return entry, False
