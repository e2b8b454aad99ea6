"""Start-up catch-up of the memory index: MongoDB is the source of truth, Chroma can be lost
(its directory deleted, restored from an older backup) or behind it. Whatever a scope should
hold (remembered messages, facts) and its collection lacks is indexed again, in batches, with
progress in the logs.

It runs as a task of its own: a worker waits a little for it (a small index is whole again
before the first answer), then answers while a large one is still being rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from core.errors import MemoryUnavailable
from core.memory.index import MemoryIndex, MemoryItem
from core.models import Scope

log = logging.getLogger(__name__)

BATCH = 256
CHECK_CHUNK = 5000  # ids asked of Chroma at once when looking for the missing ones


class RebuildStore(Protocol):
    async def memory_ids_by_scope(self) -> dict[str, list[str]]: ...

    async def memory_docs(self, ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...


def _epoch(moment: Any) -> float:
    if isinstance(moment, datetime):
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return float(moment or 0.0)


def message_item(doc: dict[str, Any]) -> MemoryItem | None:
    """What the live path indexes for a stored message (its text, then what its attachment
    said); None when there is nothing to remember."""
    parts = [doc["text"].strip()] if (doc.get("text") or "").strip() else []
    if doc.get("media_kind") and (doc.get("media_text") or "").strip():
        parts.append(doc["media_text"].strip())
    if not parts:
        return None
    return MemoryItem(
        memory_id=doc["_id"], scope=Scope.parse(doc["scope"]), text="\n".join(parts),
        author=doc["author_name"], ts=_epoch(doc["ts"]), source_kind=doc.get("media_kind") or "text",
        conversation_key=doc["conversation_key"], author_key=doc["author_key"],
    )


def fact_item(doc: dict[str, Any]) -> MemoryItem:
    """As core.facts indexes a fact (its timeline is the conversation's, marked as facts)."""
    from core.facts import facts_timeline  # core.facts imports the index: imported when used

    return MemoryItem(
        memory_id=doc["_id"], scope=Scope.parse(doc["scope"]), text=doc["text"], author=doc["about"],
        ts=_epoch(doc["valid_from"]), source_kind="fact",
        conversation_key=facts_timeline(doc["conversation_key"]), author_key=doc.get("about_key") or "",
    )


async def missing_ids(store: RebuildStore, index: MemoryIndex) -> dict[str, list[str]]:
    """Per scope, the ids MongoDB remembers that its Chroma collection does not hold."""
    missing: dict[str, list[str]] = {}
    for scope_key, ids in (await store.memory_ids_by_scope()).items():
        scope = Scope.parse(scope_key)
        if await index.count(scope) >= len(ids):
            continue  # the usual case: nothing lost, and no need to ask for every id
        absent: list[str] = []
        for start in range(0, len(ids), CHECK_CHUNK):
            chunk = ids[start:start + CHECK_CHUNK]
            held = set(await index.get_ids(scope, chunk))
            absent.extend(i for i in chunk if i not in held)
        if absent:
            missing[scope_key] = absent
    return missing


async def rebuild_missing(store: RebuildStore, index: MemoryIndex) -> int:
    """Index what the memory index lacks. Returns how many memories were indexed."""
    missing = await missing_ids(store, index)
    total = sum(len(ids) for ids in missing.values())
    if not total:
        return 0
    log.warning("memory index is missing %d memories in %d scopes; re-indexing them from MongoDB",
                total, len(missing))
    started = time.monotonic()
    done = 0
    pending = [memory_id for ids in missing.values() for memory_id in ids]
    for start in range(0, len(pending), BATCH):
        batch = pending[start:start + BATCH]
        messages, facts = await store.memory_docs(batch)
        items = [item for item in map(message_item, messages) if item is not None]
        items += [fact_item(doc) for doc in facts]
        await index.add(items)
        # Forgotten while this batch was on its way (a forget deletes Chroma's copy, then
        # MongoDB's): what is no longer in MongoDB must not stay in Chroma.
        kept_messages, kept_facts = await store.memory_docs([item.memory_id for item in items])
        kept = {doc["_id"] for doc in kept_messages + kept_facts}
        for item in items:
            if item.memory_id not in kept:
                await index.delete(item.scope, [item.memory_id])
        done += len(batch)
        rate = done / max(time.monotonic() - started, 1e-6)
        log.info("memory index rebuild: %d/%d memories (%.0f/s, %.0f s left)",
                 done, total, rate, (total - done) / rate)
    log.warning("memory index rebuilt: %d memories re-indexed in %.1f s", done, time.monotonic() - started)
    return done


async def _guarded(store: RebuildStore, index: MemoryIndex) -> int:
    try:
        return await rebuild_missing(store, index)
    except MemoryUnavailable as exc:
        # Chroma cannot be written: the next start (or `mnemo reindex`) tries again.
        log.warning("memory index rebuild skipped, the index is unavailable: %s", exc)
        return 0
    except Exception:  # best effort: answering goes on, `mnemo reindex` remains
        log.exception("memory index rebuild failed")
        return 0


async def start_rebuild(store: RebuildStore, index: MemoryIndex, wait: float = 20.0) -> asyncio.Task[int]:
    """Start the catch-up and wait up to `wait` seconds for it; the task is returned for the
    caller to own (cancel and await at shutdown; what it did not finish, the next start does)."""
    task = asyncio.create_task(_guarded(store, index), name="index-rebuild")
    try:
        await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        log.warning("memory index rebuild continues in the background; answers meanwhile may miss memories")
    return task
