"""Upkeep of what is stored: retention, a conversation's change of id, deletions a crash
interrupted, the quarantine of events that cannot be stored, and (re)building the index."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from core import commands
from core.errors import MemoryUnavailable
from core.models import Scope, utcnow
from core.pipeline.documents import memory_item, memory_text, stored_media
from core.services import Services

log = logging.getLogger(__name__)

REINDEX_BATCH = 256


class Upkeep:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def migrate_conversation(self, platform: str, old_id: str, new_id: str) -> None:
        """A conversation changed id (Telegram group -> supergroup): keep memory and settings."""
        s = self.services
        old_key, new_key = f"{platform}:{old_id}", f"{platform}:{new_id}"
        old_scope, new_scope = Scope("group", platform, old_id), Scope("group", platform, new_id)
        await s.settings.move(old_key, new_key)
        docs = await s.store.messages_in_scope(old_scope.key)
        await s.store.move_scope_messages(old_scope.key, new_scope.key, new_key, new_id)
        items = []
        for found in docs:
            found.update(scope=new_scope.key, conversation_key=new_key)
            if found.get("remembered"):
                media = stored_media(found)
                items.append(memory_item(found, memory_text(found["text"], media), media))
        await s.index.add(items)
        await s.index.delete(old_scope, [d["_id"] for d in docs])
        await s.facts.move_scope(old_scope.key, new_scope.key, new_key)

    async def enforce_retention(self) -> int:
        """Delete memories older than each channel's `retention_days`. Returns how many."""
        s = self.services
        removed = 0
        for conversation_key, days in await s.settings.all_with_retention():
            cutoff = utcnow() - timedelta(days=days)
            removed += await commands.delete_where(s, {"conversation_key": conversation_key, "ts": {"$lt": cutoff}})
        return removed

    async def quarantine(self, platform: str, event_id: str, payload: str | None, error: BaseException) -> None:
        """An event that can never be stored (not a transient error): kept aside with its
        error, logged with the traceback and counted, so the platform's intake moves on."""
        s = self.services
        log.error("%s event %s cannot be stored; quarantined", platform, event_id, exc_info=error)
        s.metrics.inc("mnemo_quarantined_total", platform=platform)
        try:
            await s.store.quarantine(platform, event_id, payload, f"{type(error).__name__}: {error}"[:2000])
        except Exception as exc:  # noqa: BLE001 - the log line above is the record then
            log.warning("could not keep quarantined event %s: %s", event_id, type(exc).__name__)

    async def index_pending(self) -> int:
        """Index the messages stored while Chroma could not be written. Returns how many."""
        return await self.reindex({"index_pending": True})

    async def reindex(
        self, query: dict[str, Any] | None = None, progress: Callable[[int, int], Any] | None = None
    ) -> int:
        """(Re)build the memory index from MongoDB, the source of truth: every remembered
        message (or those matching `query`), in batches; `progress(done, total)` after each."""
        s = self.services
        query = query if query is not None else {"$or": [{"remembered": True}, {"index_pending": True}]}
        total = await s.store.count_messages(query)
        done = 0
        batch: list[dict[str, Any]] = []
        async for found in s.store.messages_oldest_first(query):
            batch.append(found)
            if len(batch) == REINDEX_BATCH:
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
            media = stored_media(found)
            content = memory_text(found["text"], media)
            if content.strip():
                items.append(memory_item(found, content, media))
        await self.services.index.add(items)
        await self.services.store.mark_indexed([item.memory_id for item in items], [found["_id"] for found in docs])
        return len(docs)

    async def finish_deletions(self) -> int:
        """Complete recorded deletions (forget, retention) that a crash or a Chroma outage
        interrupted. Returns how many were finished."""
        finished = 0
        for deletion in await self.services.store.pending_deletions():
            try:
                await commands.finish_deletion(self.services, deletion)
            except MemoryUnavailable as exc:
                log.warning("pending deletions wait for the memory index: %s", exc)
                break
            finished += 1
        if finished:
            log.info("finished %d interrupted deletions", finished)
        return finished
