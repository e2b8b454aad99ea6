"""The memory index: one Chroma collection per privacy scope, searched through an in-memory
view of that one scope (core.memory.scope_view: hybrid lexical + semantic ranking).

A scope's memories live only in that scope's collection, so a query that forgets a filter
still cannot read another scope: it has to name the collection, and each view mirrors exactly
one collection. Chroma is the source of truth (and what other workers see); a process keeps
views of the scopes it searches, rebuilt from Chroma when the collection's size differs.
Chroma's client is synchronous; calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.memory.embedder import Embedder
from core.memory.query import plan_query
from core.memory.scope_view import DENSE_POOL, EXACT_LIMIT, ScopeView
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
    def __init__(
        self,
        chroma: Any,
        embedder: Embedder,
        max_cached_memories: int = 400_000,
        exact_limit: int = EXACT_LIMIT,
        relevance_cutoff: bool = True,
    ) -> None:
        self.chroma = chroma
        self.embedder = embedder
        # Scopes larger than this take their semantic candidates from Chroma's ANN index.
        self.exact_limit = exact_limit
        # Searches return nothing when nothing in the scope is relevant (benchmarks turn it off
        # to compare rankings).
        self.relevance_cutoff = relevance_cutoff
        # Views cost ~2 KB per memory; past this many, the least recently searched scopes are dropped.
        self.max_cached_memories = max_cached_memories
        self._collections: dict[str, Any] = {}
        self._views: OrderedDict[str, ScopeView] = OrderedDict()
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

    def _view(self, scope: Scope, collection: Any) -> ScopeView:
        """The scope's view, rebuilt from Chroma when absent or out of step with the collection
        (another worker wrote to the scope) or carrying many tombstones."""
        name = collection_name(scope)
        count = int(collection.count())
        with self._lock:
            view = self._views.get(name)
            if view is not None:
                self._views.move_to_end(name)
        if view is not None and len(view) == count and view.dead <= max(1000, count // 4):
            return view
        view = self._load(collection, count)
        with self._lock:
            self._views[name] = view
            self._views.move_to_end(name)
            total = sum(len(v) for v in self._views.values())
            while total > self.max_cached_memories and len(self._views) > 1:
                _, dropped = self._views.popitem(last=False)
                total -= len(dropped)
        return view

    @staticmethod
    def _load(collection: Any, count: int) -> ScopeView:
        ids: list[str] = []
        documents: list[str] = []
        metadatas: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        page = 5000
        for offset in range(0, count, page):
            batch = collection.get(
                include=["documents", "metadatas", "embeddings"], limit=page, offset=offset
            )
            ids.extend(batch["ids"])
            documents.extend(d or "" for d in batch["documents"])
            metadatas.extend(dict(m or {}) for m in batch["metadatas"])
            vectors.append(np.asarray(batch["embeddings"], dtype=np.float32))
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
        view = ScopeView(matrix.shape[1] if len(ids) else 1)
        # In time order, so each memory is linked to the message before it.
        for i in sorted(range(len(ids)), key=lambda i: float(metadatas[i].get("ts") or 0.0)):
            view.add(ids[i], documents[i], metadatas[i], matrix[i])
        return view

    def _cached_view(self, scope: Scope) -> ScopeView | None:
        with self._lock:
            return self._views.get(collection_name(scope))

    # -- writes -------------------------------------------------------------------------

    async def embed_items(self, items: list[MemoryItem]) -> np.ndarray:
        """The vectors `add` would compute (lets a bulk import embed while it stores)."""
        return await self.embedder.embed([item.document() for item in items])

    async def add(self, items: list[MemoryItem], vectors: np.ndarray | None = None) -> None:
        if not items:
            return
        if vectors is None:
            vectors = await self.embed_items(items)
        await asyncio.to_thread(self._add_sync, items, vectors)

    def _add_sync(self, items: list[MemoryItem], vectors: np.ndarray) -> None:
        by_scope: dict[Scope, list[int]] = {}
        for i, item in enumerate(items):
            by_scope.setdefault(item.scope, []).append(i)
        for scope, rows in by_scope.items():
            collection = self._collection(scope)
            assert collection is not None
            documents = [items[i].document() for i in rows]
            metadatas = [items[i].metadata() for i in rows]
            collection.upsert(
                ids=[items[i].memory_id for i in rows],
                embeddings=vectors[rows],
                documents=documents,
                metadatas=metadatas,  # type: ignore[arg-type]
            )
            view = self._cached_view(scope)
            if view is not None and view.dim == vectors.shape[1]:
                with view.lock:
                    for i, document, metadata in zip(rows, documents, metadatas):
                        view.add(items[i].memory_id, document, metadata, vectors[i])

    async def delete(self, scope: Scope, memory_ids: list[str]) -> None:
        if memory_ids:
            await asyncio.to_thread(self._delete_sync, scope, memory_ids)

    def _delete_sync(self, scope: Scope, memory_ids: list[str]) -> None:
        collection = self._collection(scope, create=False)
        if collection is None:
            return
        collection.delete(ids=memory_ids)
        view = self._cached_view(scope)
        if view is not None:
            with view.lock:
                for memory_id in memory_ids:
                    view.remove(memory_id)

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

    async def search(
        self, scope: Scope, query: str, k: int = 10, now: float | None = None, cutoff: bool | None = None
    ) -> list[Hit]:
        """The k memories of `scope` that best answer `query`, asked at `now` (epoch seconds;
        it anchors "last week" and the like); none when nothing there is relevant to it
        (`cutoff`, default the index's `relevance_cutoff`)."""
        if not query.strip():
            return []
        view = await asyncio.to_thread(self._open_view, scope)
        if view is None:
            return []
        plan = plan_query(query, set(view.authors), now)
        cutoff = self.relevance_cutoff if cutoff is None else cutoff
        if cutoff and not view.knows_names(plan):
            return []
        vector = (await self.embedder.embed([plan.semantic_text]))[0]
        return await asyncio.to_thread(self._search_sync, scope, view, plan, vector, k, cutoff)

    def _open_view(self, scope: Scope) -> ScopeView | None:
        collection = self._collection(scope, create=False)
        if collection is None:
            return None
        view = self._view(scope, collection)
        return view if len(view) else None

    def _search_sync(
        self, scope: Scope, view: ScopeView, plan: Any, vector: np.ndarray, k: int, cutoff: bool
    ) -> list[Hit]:
        if len(vector) != view.dim:
            return []  # the embedding model changed since these memories were stored
        found: list[str] | None = None
        if len(view) > self.exact_limit:
            collection = self._collection(scope, create=False)
            if collection is not None:
                result = collection.query(
                    query_embeddings=[vector], n_results=min(DENSE_POOL, len(view)), include=[]
                )
                found = list(result["ids"][0])
        with view.lock:
            pool = None if found is None else [view.row_of[i] for i in found if i in view.row_of]
            ranked = view.search(plan, vector, k, pool, cutoff)
            return [
                Hit(r.memory_id, r.score, view.documents[r.row], dict(view.metadatas[r.row])) for r in ranked
            ]
