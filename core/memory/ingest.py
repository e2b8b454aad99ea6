"""Bulk import of history (chat exports, benchmarks): the same stored documents and index
entries the per-message pipeline makes, written in batches.

The per-message pipeline embeds one message at a time; importing months of a conversation
that way is dominated by per-call overhead. Here messages are stored with `insert_many`
and embedded and indexed a batch at a time. Nothing is answered: history is remembered,
not replied to.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from core import commands, kinds
from core.media import MediaText
from core.memory.index import MemoryItem
from core.models import Message
from core.pipeline.documents import memory_item, memory_text
from core.services import Services
from core.store import DONE, message_doc

# One batch of an import: its stored documents, its memories and the task embedding them.
_Batch = tuple[list[dict[str, Any]], list[MemoryItem], "asyncio.Task[np.ndarray]"]


async def ingest_history(
    services: Services,
    entries: Iterable[tuple[Message, list[MediaText]]],
    batch_size: int = 256,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Store and remember `entries` (message, already-read media text), in order.

    Dedupe is the pipeline's: a message whose event key is already stored is skipped.
    Channel `memory` settings and user opt-outs are honoured as in the pipeline.
    `on_batch(messages, newly_stored)` is called after each batch is stored and indexed.
    Returns how many messages were newly stored.
    """
    settings_cache: dict[str, bool] = {}
    opted_out: dict[str, bool] = {}

    async def prepare(
        batch: Sequence[tuple[Message, list[MediaText]]],
    ) -> tuple[list[dict[str, Any]], list[MemoryItem]]:
        docs: list[dict[str, Any]] = []
        items: list[MemoryItem] = []
        for message, media in batch:
            # History is what people said to each other: told, except the /commands in it.
            kind = kinds.COMMAND if message.is_command or commands.parse(message.text) else kinds.TOLD
            doc = message_doc(message, remember=kind == kinds.TOLD, kind=kind)
            content = memory_text(message.text, media)
            if media:
                doc["media_text"] = "\n".join(m.text for m in media)
                doc["media_kind"] = media[0].kind
            conv = message.conversation_key
            if conv not in settings_cache:
                settings_cache[conv] = (await services.settings.get(conv)).memory == "on"
            if message.user_key not in opted_out:
                opted_out[message.user_key] = bool(
                    (await services.store.get_user(message.user_key)).get("opted_out")
                )
            doc["remembered"] = bool(
                doc["remember"]
                and content.strip()
                and settings_cache[conv]
                and not opted_out[message.user_key]
            )
            doc["state"] = DONE
            docs.append(doc)
            if doc["remembered"]:
                items.append(memory_item(doc, content, media))
        return docs, items

    # A two-stage pipeline: while batch i is stored in MongoDB and indexed in Chroma (mostly
    # one core), batch i+1 is embedded on the worker threads (LoCoMo: ~335 vs ~280 msg/s on
    # 2 cores). Only what was actually stored (not a redelivered duplicate) is indexed.
    async def store_batch(
        docs: list[dict[str, Any]], items: list[MemoryItem], embedding: asyncio.Task[np.ndarray]
    ) -> int:
        inserted = await services.store.insert_new_messages(docs)
        vectors = await embedding
        keep = [i for i, item in enumerate(items) if item.memory_id in inserted]
        if keep:
            await services.index.add([items[i] for i in keep], vectors[keep])
        return len(inserted)

    stored = 0
    previous: _Batch | None = None  # embedded (or embedding), to be stored next
    current: _Batch | None = None  # embedding while `previous` is stored

    async def store_and_report(batch: _Batch) -> int:
        added = await store_batch(*batch)
        if on_batch is not None:
            on_batch(len(batch[0]), added)
        return added

    pending = iter(entries)
    try:
        while chunk := list(itertools.islice(pending, batch_size)):
            docs, items = await prepare(chunk)
            current = (docs, items, asyncio.create_task(services.index.embed_items(items)))
            if previous is not None:
                stored += await store_and_report(previous)
            previous, current = current, None
        if previous is not None:
            stored += await store_and_report(previous)
            previous = None
    finally:
        # On an error, neither batch's embedding task is left running or unawaited.
        leftover = [batch[2] for batch in (previous, current) if batch is not None]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
    return stored

