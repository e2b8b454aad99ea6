"""The memory index: one Chroma collection per privacy scope, plus a BM25 index beside it.

A scope's memories live only in that scope's collection, so a query that forgets a filter
still cannot read another scope: it has to name the collection. Chroma's client is
synchronous; calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.memory.embedder import Embedder
from core.memory.lexical import BM25Index
from core.models import Scope


@dataclass
class MemoryItem:
    memory_id: str  # the stored message's _id
    scope: Scope
    text: str  # what is remembered (message text, transcript, image description)
    author: str
    ts: float  # epoch seconds
    source_kind: str = "text"
    conversation_key: str = ""
    author_key: str = ""

    def document(self) -> str:
        # The author's name is part of what is searchable ("what did Alice say about...").
        return f"{self.author}: {self.text}"

    def metadata(self) -> dict[str, Any]:
        return {
            "author": self.author,
            "ts": self.ts,
            "source_kind": self.source_kind,
            "conversation_key": self.conversation_key,
            "author_key": self.author_key,
        }


@dataclass
class Hit:
    memory_id: str
    score: float
    document: str
    metadata: dict[str, Any] = field(default_factory=dict)


def collection_name(scope: Scope) -> str:
    """Chroma names allow [a-zA-Z0-9._-], 3-512 chars; keep it readable and collision-free."""
    readable = re.sub(r"[^a-zA-Z0-9_-]+", "-", scope.key)[:40].strip("-_")
    digest = hashlib.sha256(scope.key.encode()).hexdigest()[:12]
    return f"mem-{readable}-{digest}"


class MemoryIndex:
    def __init__(self, chroma: Any, embedder: Embedder) -> None:
        self.chroma = chroma
        self.embedder = embedder
        self._collections: dict[str, Any] = {}
        self._lexical: dict[str, BM25Index] = {}
        self._lock = threading.Lock()

    # -- collections --------------------------------------------------------------------

    def _collection(self, scope: Scope, create: bool = True) -> Any | None:
        name = collection_name(scope)
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            if create:
                found = self.chroma.get_or_create_collection(
                    name, metadata={"hnsw:space": "cosine", "scope": scope.key}, embedding_function=None
                )
            else:
                try:
                    found = self.chroma.get_collection(name, embedding_function=None)
                except Exception:  # noqa: BLE001 - chroma raises different types per backend
                    return None
            self._collections[name] = found
            return found

    def _lexical_for(self, scope: Scope, collection: Any) -> BM25Index:
        """The scope's BM25 index, rebuilt from Chroma when absent or out of step (another
        worker wrote to the scope)."""
        name = collection_name(scope)
        index = self._lexical.get(name)
        count = collection.count()
        if index is not None and len(index) == count:
            return index
        index = BM25Index()
        offset = 0
        while offset < count:
            batch = collection.get(include=["documents"], limit=5000, offset=offset)
            for memory_id, document in zip(batch["ids"], batch["documents"] or []):
                index.add(memory_id, document or "")
            offset += 5000
        self._lexical[name] = index
        return index

    # -- writes -------------------------------------------------------------------------

    async def add(self, items: list[MemoryItem]) -> None:
        if not items:
            return
        vectors = await self.embedder.embed([item.document() for item in items])
        await asyncio.to_thread(self._add_sync, items, vectors)

    def _add_sync(self, items: list[MemoryItem], vectors: np.ndarray) -> None:
        by_scope: dict[Scope, list[int]] = {}
        for i, item in enumerate(items):
            by_scope.setdefault(item.scope, []).append(i)
        for scope, rows in by_scope.items():
            collection = self._collection(scope)
            assert collection is not None
            collection.upsert(
                ids=[items[i].memory_id for i in rows],
                embeddings=vectors[rows].tolist(),
                documents=[items[i].document() for i in rows],
                metadatas=[items[i].metadata() for i in rows],
            )
            lexical = self._lexical.get(collection_name(scope))
            if lexical is not None:
                for i in rows:
                    lexical.add(items[i].memory_id, items[i].document())

    async def delete(self, scope: Scope, memory_ids: list[str]) -> None:
        if memory_ids:
            await asyncio.to_thread(self._delete_sync, scope, memory_ids)

    def _delete_sync(self, scope: Scope, memory_ids: list[str]) -> None:
        collection = self._collection(scope, create=False)
        if collection is None:
            return
        collection.delete(ids=memory_ids)
        lexical = self._lexical.get(collection_name(scope))
        if lexical is not None:
            for memory_id in memory_ids:
                lexical.remove(memory_id)

    async def count(self, scope: Scope) -> int:
        def run() -> int:
            collection = self._collection(scope, create=False)
            return 0 if collection is None else int(collection.count())

        return await asyncio.to_thread(run)

    async def get_ids(self, scope: Scope, memory_ids: list[str]) -> list[str]:
        def run() -> list[str]:
            collection = self._collection(scope, create=False)
            if collection is None or not memory_ids:
                return []
            return list(collection.get(ids=memory_ids, include=[])["ids"])

        return await asyncio.to_thread(run)

    # -- search -------------------------------------------------------------------------

    async def search(self, scope: Scope, query: str, k: int = 10) -> list[Hit]:
        """Hybrid search in one scope: BM25 and dense ranks fused (reciprocal rank)."""
        if not query.strip():
            return []
        vector = (await self.embedder.embed([query]))[0]
        return await asyncio.to_thread(self._search_sync, scope, query, vector, k)

    def _search_sync(self, scope: Scope, query: str, vector: np.ndarray, k: int) -> list[Hit]:
        collection = self._collection(scope, create=False)
        if collection is None:
            return []
        count = collection.count()
        if count == 0:
            return []
        depth = min(count, max(k * 5, 50))
        dense = collection.query(query_embeddings=[vector.tolist()], n_results=depth, include=["distances"])
        dense_ids: list[str] = dense["ids"][0]
        lexical_ids = [doc_id for doc_id, _ in self._lexical_for(scope, collection).search(query, depth)]
        fused: dict[str, float] = {}
        for rank, doc_id in enumerate(dense_ids):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (60 + rank)
        for rank, doc_id in enumerate(lexical_ids):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (60 + rank)
        ranked = sorted(fused.items(), key=lambda kv: kv[1], reverse=True)[:k]
        if not ranked:
            return []
        got = collection.get(ids=[doc_id for doc_id, _ in ranked], include=["documents", "metadatas"])
        docs = {i: (d, m) for i, d, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [])}
        return [
            Hit(doc_id, score, docs[doc_id][0] or "", dict(docs[doc_id][1] or {}))
            for doc_id, score in ranked
            if doc_id in docs
        ]
