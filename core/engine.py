"""The core's facade (DESIGN.md "Data flow of one message"): what adapters, the CLI and tests
call. The work is done by the stages in core.pipeline, which receive core.services.Services:

submit: dedupe + store (before anything else) -> queue per conversation (pipeline.intake).
process: claim -> media -> remember -> decide -> recall -> answer (pipeline.process,
pipeline.answering) -> send -> store reply (pipeline.delivery). Leases, heartbeat and adoption:
pipeline.worker. Retention, migration, deletions, reindex: pipeline.upkeep.
Built in one place: core.build.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from core import commands, llm
from core.answer import Source
from core.errors import MemoryUnavailable
from core.media import MediaText
from core.memory.index import MemoryItem
from core.memory.ingest import ingest_history
from core.memory.rebuild import start_rebuild
from core.migrations import run_migrations
from core.models import Message, Reply
from core.pipeline.answering import Answering
from core.pipeline.delivery import Delivery
from core.pipeline.documents import memory_item
from core.pipeline.intake import Intake
from core.pipeline.process import Processor
from core.pipeline.turns import TurnSignals
from core.pipeline.upkeep import Upkeep
from core.pipeline.worker import Worker, every
from core.platform import Platform
from core.services import Services
from core.web_links import WebLogins

log = logging.getLogger(__name__)

# Series that exist from the start, so dashboards and alerts see zeros rather than gaps.
_COUNTERS = ("mnemo_messages_in_total", "mnemo_replies_out_total", "mnemo_duplicates_total",
             "mnemo_model_errors_total", "mnemo_send_failures_total", "mnemo_recovered_total",
             "mnemo_rate_limit_waits_total", "mnemo_rate_limit_wait_seconds_total", "mnemo_quarantined_total")


class Core:
    def __init__(self, services: Services) -> None:
        self.services = services
        # The parts adapters, the CLI and tests reach (the same objects the stages use).
        self.config = services.config
        self.store = services.store
        self.index = services.index
        self.answerer = services.answerer
        self.media = services.media
        self.settings = services.settings
        self.facts = services.facts
        self.platforms = services.platforms
        self.runner = services.runner
        self.metrics = services.metrics
        self.worker_id = services.worker_id
        for name in _COUNTERS:
            self.metrics.inc(name, 0)
        self.worker = Worker(services)
        self.answering = Answering(services)
        self.processor = Processor(services, self.answering, Delivery(services))
        self.turns = TurnSignals(services)
        self.intake = Intake(services, self.processor, self.worker, self.turns)
        self.worker.enqueue = self.intake.enqueue
        self.upkeep = Upkeep(services)
        self.web_logins = WebLogins(services)
        self._loops: list[asyncio.Task[Any]] = []  # loops that take work: stopped first when draining

    @property
    def learner(self) -> Any:
        return self.services.learner

    @property
    def draining(self) -> bool:
        return self.services.draining

    @property
    def lease(self) -> timedelta:
        return self.services.lease

    def register(self, platform: Platform) -> None:
        self.platforms[platform.name] = platform

    # -- what adapters may call besides submit (see core/platform.py) -------------------

    @property
    def dashboard(self) -> Any:
        """The web pages' read-only queries (core/store/dashboard.py), each scoped."""
        return self.store.dashboard

    async def health(self) -> dict[str, str]:
        """"ok" or "error: <kind>" per store. Writes are probed, not just pings: a deleted
        directory or a full disk still answers pings."""
        checks: dict[str, str] = {}
        for name, probe in (("mongodb", lambda: self.store.probe_write(self.worker_id)),
                            ("chroma", self.index.probe_write)):
            try:
                await asyncio.wait_for(probe(), 5)
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                checks[name] = f"error: {type(exc).__name__}"
        return checks

    @property
    def pending_jobs(self) -> int:
        """Jobs queued or running (replies in flight): adapters wait on it before closing."""
        return self.runner.pending

    async def run_command(self, message: Message, platform: Platform, name: str, args: str = "") -> Reply:
        """Run a command for `message` at once, without storing it (the web pages' buttons)."""
        return await commands.run(self.services, message, platform, commands.Command(name, args))

    def run_in_conversation(self, conversation_key: str, job: Any) -> None:
        """Run `job` (an async callable) after the conversation's queued work, owned and
        awaited at shutdown like every other job."""
        self.runner.submit(conversation_key, job)

    async def amend_message(self, event_key: str, fields: dict[str, Any]) -> None:
        """Correct a stored message's metadata an adapter learned after storing it (author
        name, DM flag and scope, permalink)."""
        await self.store.amend_message(event_key, fields)

    def note_rate_limit(self, platform: str, seconds: float) -> None:
        """Adapters call this when a platform says 429 and they wait `seconds` before retrying."""
        self.metrics.inc("mnemo_rate_limit_waits_total", platform=platform)
        self.metrics.inc("mnemo_rate_limit_wait_seconds_total", seconds, platform=platform)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        await self.store.ensure_indexes()
        await self.facts.ensure_indexes()
        await run_migrations(self.services)
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
        await self.worker.start_beating()
        self.turns.start()
        if background:
            beat_every = self.worker.beat_every
            for seconds, job, name in ((3600, self.enforce_retention, "retention"),
                                       (beat_every, self.recover_stale, "recovery"),
                                       (30, self.finish_deletions, "deletions"),
                                       (30, self.index_pending, "index-pending")):
                self._loops.append(asyncio.create_task(every(seconds, job), name=name))

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: take no new work, let in-flight work finish within `timeout`,
        then hand back whatever is left so another worker answers it at once."""
        self.services.draining = True
        self.metrics.gauge("mnemo_draining", 1)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self.runner.close(timeout)
        await self.turns.stop()
        await self.learner.close(timeout)  # what was told is learned before the process exits
        await self.worker.hand_back()

    async def close(self, timeout: float = 30.0) -> None:
        await self.drain(timeout)
        await self.media.close()

    async def renew_leases(self) -> None:
        await self.worker.renew_leases()

    async def live_workers(self) -> set[str]:
        return await self.worker.live_workers()

    # -- intake -------------------------------------------------------------------------

    async def submit(self, message: Message) -> asyncio.Future[None] | None:
        """Store `message` and queue it. Returns a future done once it is processed, or
        None when it was already stored (a redelivered event: nothing happens twice)."""
        return await self.intake.submit(message)

    async def handle(self, message: Message) -> None:
        """Submit and wait until processed (console, tests)."""
        future = await self.submit(message)
        if future is not None:
            await future

    async def apply_edit(self, message: Message) -> None:
        """An edited message replaces its remembered text (same scope, same id)."""
        await self.intake.apply_edit(message)

    async def ingest_history(self, entries: list[tuple[Message, list[MediaText]]]) -> int:
        """Bulk import of past messages with their already-read media text: stored and
        remembered exactly as the pipeline does, in batches, without replying."""
        return await ingest_history(self.services, entries)

    async def process(self, message: Message) -> None:
        await self.processor.process(message)

    async def recall(
        self, message: Message, query: str, k: int, exclude_id: str | None = None,
        turns: list[dict[str, Any]] | None = None,
    ) -> list[Source]:
        return await self.answering.recall(message, query, k, exclude_id, turns)

    def _memory_item(self, doc: dict[str, Any], content: str, media: list[MediaText]) -> MemoryItem:
        return memory_item(doc, content, media)  # bot/importer names it here

    # -- edits, migration, retention, recovery ------------------------------------------

    async def migrate_conversation(self, platform: str, old_id: str, new_id: str) -> None:
        """A conversation changed id (Telegram group -> supergroup): keep memory and settings."""
        await self.upkeep.migrate_conversation(platform, old_id, new_id)

    async def enforce_retention(self) -> int:
        return await self.upkeep.enforce_retention()

    async def quarantine(self, platform: str, event_id: str, payload: str | None, error: BaseException) -> None:
        await self.upkeep.quarantine(platform, event_id, payload, error)

    async def index_pending(self) -> int:
        return await self.upkeep.index_pending()

    async def reindex(
        self, query: dict[str, Any] | None = None, progress: Callable[[int, int], Any] | None = None
    ) -> int:
        return await self.upkeep.reindex(query, progress)

    async def finish_deletions(self) -> int:
        return await self.upkeep.finish_deletions()

    async def recover_stale(self, conversation_key: str | None = None) -> int:
        """Adopt and process messages whose holder is gone, of one conversation or of every
        registered platform. Returns how many."""
        return await self.worker.recover_stale(conversation_key)
