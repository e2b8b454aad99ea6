"""An in-memory view of one scope's memories, and the ranking that runs over it.

Chroma holds the scope's memories (documents, metadata, vectors); this view mirrors one scope
in numpy arrays so a query is scored exactly, over every memory, in a few vector operations:

- lexical: BM25 where each memory is read together with the message before it in the same
  conversation session ("Where did you go?" / "Lisbon!" — the answer alone says little);
- semantic: cosine of the question with the memory's vector and with the memory-plus-previous
  context vector (computed from the two stored vectors, no second embedding);
- both scores normalized per query and mixed, then: memories by the people the question names
  are preferred; "when" questions prefer memories that mention a time; questions about a time
  ("last week", "in May") prefer memories from then; and a memory gains from its session
  (conversations stay on a topic for a while): the session's BM25 as a whole, the best
  candidates of the session, and its better neighbour.

A question whose answer is a list gathered over time ("what books has Alice read?") prefers
the named person's own messages more, and results from several sessions over one session's.

A question with nothing relevant in the scope gets no memories at all (`cutoff`): scores are
normalized per query, so the best hit always looks good; the cut-off reads absolute signals:
the raw cosine of the best semantic match, the share of the question's words (weighted by
rarity) that the best lexical match covers, and whether the names the question uses appear
in the scope at all.

The view is private to one process and rebuilt from Chroma when its size differs from the
collection's (another worker wrote to the scope); it is updated in place by this process's
own writes. Never shared across scopes.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.memory.lexical import Postings, tokenize, words
from core.memory.query import QueryPlan, mentions_time
from core.memory.view_scoring import diversified, lexical_scores, session_lexical_scores, session_strength

try:
    from threadpoolctl import ThreadpoolController

    _BLAS: ThreadpoolController | None = ThreadpoolController()
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn / sentence-transformers
    _BLAS = None


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """A query's matrix-vector products are small; with BLAS threads on a busy 2-core machine
    they wait on each other (measured 18 ms instead of 2 ms for 10,000 vectors)."""
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS is not None else contextlib.nullcontext()


# Messages of one conversation more than this far apart belong to different sessions.
SESSION_GAP_S = 2 * 3600
# Ranking weights, tuned on LoCoMo dev conversations (bench/locomo.py); results are flat around
# these values (+-0.1 on any one moves Recall@10 by under 0.01).
LEXICAL_WEIGHT = 0.5
CONTEXT_MIX = 0.5  # share of the semantic score taken from the memory-plus-previous vector
CONTEXT_GAMMA = 0.8  # weight of the previous message in that context vector
SESSION_LEXICAL_WEIGHT = 0.1  # BM25 of the whole session around a memory
AUTHOR_BONUS = 0.4
TIME_MENTION_BONUS = 0.2
TIME_WINDOW_BONUS = 0.5  # memories from the time the question names ("last week", "in May")
SESSION_WEIGHT = 0.3  # mean of the best three candidates of the memory's session
NEIGHBOR_WEIGHT = 0.05  # the better of the memory's previous and next message
# Questions whose answer is a list gathered over time ("what books has Alice read?"): the
# person's own words weigh more, and each result loses this much per better result of its
# session already taken, so several conversations are heard. Other questions are ranked as is
# (their answer usually sits in one session, next to others of its turns).
MANY_AUTHOR_BONUS = 0.6
SESSION_REPEAT_PENALTY = 0.05
CANDIDATES = 200
# The relevance cut-off (measured with `bench/locomo.py --foreign`: other conversations'
# questions must find nothing, a conversation's own still find their evidence). MiniLM puts
# unrelated short texts at cosine 0.0-0.25 and paraphrases at 0.4 and above.
RELEVANCE_FLOOR = 0.33  # best raw cosine + COVERAGE_WEIGHT * best lexical coverage
COVERAGE_WEIGHT = 0.5
# Above this many memories, semantic scoring reads only a pool: Chroma's nearest neighbours of
# the query plus the best lexical matches (exact scoring of 100,000 vectors costs 5-20 ms).
EXACT_LIMIT = 20_000
DENSE_POOL = 400
LEXICAL_POOL = 400


@dataclass
class Ranked:
    memory_id: str
    score: float
    row: int


class ScopeView:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.documents: list[str] = []
        self.metadatas: list[dict[str, Any]] = []
        self.postings = Postings()
        self.vocabulary: Counter[str] = Counter()  # unstemmed words of live memories
        self.alive_count = 0
        self.authors: list[str] = []  # distinct lower-cased author names
        self._author_index: dict[str, int] = {}
        self._by_conversation: dict[str, tuple[list[float], list[int]]] = {}  # ts-sorted rows
        self._sessions = 0
        capacity = 64
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.alive = np.zeros(capacity, dtype=bool)
        self.ts = np.zeros(capacity, dtype=np.float64)
        self.prev = np.full(capacity, -1, dtype=np.int64)
        self.next = np.full(capacity, -1, dtype=np.int64)
        self.session = np.zeros(capacity, dtype=np.int64)
        self.context_norm = np.ones(capacity, dtype=np.float32)
        self.length = np.zeros(capacity, dtype=np.float32)
        self.has_time = np.zeros(capacity, dtype=bool)
        self.author = np.zeros(capacity, dtype=np.int64)
        self.is_fact = np.zeros(capacity, dtype=bool)  # a learned fact (core.facts), not a message

    def __len__(self) -> int:
        return self.alive_count

    @property
    def dead(self) -> int:
        return len(self.ids) - self.alive_count

    # -- writes -------------------------------------------------------------------------

    def _grow(self) -> None:
        capacity = len(self.alive) * 2
        for name in (
            "alive",
            "ts",
            "prev",
            "next",
            "session",
            "context_norm",
            "length",
            "has_time",
            "author",
            "is_fact",
        ):
            old = getattr(self, name)
            new = np.full(capacity, -1 if name in ("prev", "next") else 0, dtype=old.dtype)
            if name == "context_norm":
                new[:] = 1.0
            new[: len(old)] = old
            setattr(self, name, new)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        vectors[: len(self.vectors)] = self.vectors
        self.vectors = vectors

    def add(self, memory_id: str, document: str, metadata: dict[str, Any], vector: np.ndarray) -> None:
        if memory_id in self.row_of:
            self.remove(memory_id)  # an edit: the old row becomes a tombstone
        row = len(self.ids)
        if row == len(self.alive):
            self._grow()
        self.ids.append(memory_id)
        self.row_of[memory_id] = row
        self.documents.append(document)
        self.metadatas.append(metadata)
        self.vocabulary.update(set(words(document)))
        counts = Counter(tokenize(document))
        self.postings.add(row, counts)
        self.length[row] = sum(counts.values())
        self.vectors[row] = vector
        self.alive[row] = True
        self.alive_count += 1
        ts = float(metadata.get("ts") or 0.0)
        self.ts[row] = ts
        self.has_time[row] = mentions_time(document)
        self.is_fact[row] = metadata.get("source_kind") == "fact"
        name = str(metadata.get("author") or "").strip().lower()
        if name not in self._author_index:
            self._author_index[name] = len(self.authors)
            self.authors.append(name)
        self.author[row] = self._author_index[name]
        # Place it in its conversation's timeline and link it to its neighbours.
        times, rows = self._by_conversation.setdefault(str(metadata.get("conversation_key") or ""), ([], []))
        at = bisect.bisect_right(times, ts)
        times.insert(at, ts)
        rows.insert(at, row)
        before = rows[at - 1] if at > 0 else -1
        after = rows[at + 1] if at + 1 < len(rows) else -1
        self._link(row, before)
        if before >= 0 and self.prev[row] == before:
            self.session[row] = self.session[before]
        elif after >= 0 and self.ts[after] - ts <= SESSION_GAP_S:
            self.session[row] = self.session[after]
        else:
            self.session[row] = self._sessions
            self._sessions += 1
        if after >= 0:
            self._link(after, row)

    def _link(self, row: int, before: int) -> None:
        """Make `before` the context of `row` when they are in one session (else no context)."""
        old = int(self.prev[row])
        if old >= 0 and self.next[old] == row:
            self.next[old] = -1
        if self.is_fact[row]:
            # A learned fact says all it means; read with the fact before it, it blurs (and
            # a separate facts-only ranking measured worse: bench/locomo.py --facts).
            before = -1
        if before >= 0 and self.ts[row] - self.ts[before] <= SESSION_GAP_S:
            self.prev[row] = before
            self.next[before] = row
            dot = float(self.vectors[row] @ self.vectors[before])
            gamma = CONTEXT_GAMMA
            self.context_norm[row] = max(np.sqrt(1 + gamma * gamma + 2 * gamma * dot), 1e-6)
        else:
            self.prev[row] = -1
            self.context_norm[row] = 1.0

    def remove(self, memory_id: str) -> None:
        row = self.row_of.pop(memory_id, None)
        if row is None:
            return
        self.alive[row] = False
        self.alive_count -= 1
        self.vocabulary.subtract(set(words(self.documents[row])))
        times, rows = self._by_conversation[str(self.metadatas[row].get("conversation_key") or "")]
        at = rows.index(row)
        del times[at]
        del rows[at]
        before, after = int(self.prev[row]), int(self.next[row])
        self._link(row, -1)
        if after >= 0:
            self._link(after, before)

    # -- search -------------------------------------------------------------------------

    def search(
        self,
        plan: QueryPlan,
        query_vector: np.ndarray,
        k: int,
        dense_pool: list[int] | None = None,
        cutoff: bool = True,
    ) -> list[Ranked]:
        """The k best memories, or none when nothing in the scope is relevant (`cutoff`).
        Without `dense_pool` every memory is scored exactly; with it (large scopes: the rows
        an approximate nearest-neighbour index found for the query), only that pool and the
        best lexical matches are, so a query reads a few hundred vectors instead of all."""
        if self.alive_count == 0:
            return []
        if cutoff and not self.knows_names(plan):
            return []
        with one_blas_thread():
            return self._search(plan, query_vector, k, dense_pool, cutoff)

    def knows_names(self, plan: QueryPlan) -> bool:
        """False when the question names things (capitalized words) none of which any memory
        mentions: "the capital of France" asked where France never came up."""
        return not plan.names or any(self.vocabulary[name] > 0 for name in plan.names)

    def _search(
        self, plan: QueryPlan, query_vector: np.ndarray, k: int, dense_pool: list[int] | None, cutoff: bool
    ) -> list[Ranked]:
        n = len(self.ids)
        alive = self.alive[:n]
        lexical, coverage = lexical_scores(self, plan.text, n, self._author_terms(plan))
        if dense_pool is None:
            in_pool = alive
            semantic, cosine = self._semantic(query_vector, np.arange(n))
            live = semantic[alive]
            best_cosine = float(cosine[alive].max())
        else:
            lexical_pool = np.argpartition(-lexical, min(LEXICAL_POOL, n - 1))[:LEXICAL_POOL]
            pool = np.union1d(np.asarray(dense_pool, dtype=np.int64), lexical_pool[lexical[lexical_pool] > 0])
            pool = pool[alive[pool]]
            in_pool = np.zeros(n, dtype=bool)
            in_pool[pool] = True
            semantic = np.zeros(n, dtype=np.float32)
            semantic[pool], cosine = self._semantic(query_vector, pool)
            best_cosine = float(cosine.max()) if len(pool) else 0.0
            # The spread of similarities over the scope, from a fixed sample of it.
            live = self._semantic(query_vector, self._sample(alive))[0]
        if cutoff and best_cosine + COVERAGE_WEIGHT * float(coverage[alive].max()) < RELEVANCE_FLOOR:
            return []
        semantic = (semantic - live.mean()) / (live.std() + 1e-9)  # cosines sit in a narrow band
        semantic[~in_pool] = 0.0
        score = LEXICAL_WEIGHT * _unit_max(lexical)
        if SESSION_LEXICAL_WEIGHT:
            score += SESSION_LEXICAL_WEIGHT * _unit_max(session_lexical_scores(self, plan.text, n))
        score += (1 - LEXICAL_WEIGHT) * _unit_max(semantic)
        if plan.named_authors:
            named = [self._author_index[a] for a in plan.named_authors if a in self._author_index]
            if named:
                score += (MANY_AUTHOR_BONUS if plan.asks_many else AUTHOR_BONUS) * np.isin(self.author[:n], named)
        if plan.asks_when:
            score += TIME_MENTION_BONUS * self.has_time[:n]
        if plan.window is not None:
            start, end = plan.window
            score += TIME_WINDOW_BONUS * ((self.ts[:n] >= start) & (self.ts[:n] < end))
        score[~in_pool] = -np.inf
        return self._ranked(plan, score, k)

    def _ranked(self, plan: QueryPlan, score: np.ndarray, k: int) -> list[Ranked]:
        """The k best by `score` (-inf: not a candidate), with their sessions' strength."""
        n = len(score)
        depth = min(CANDIDATES, self.alive_count)
        candidates = np.argpartition(-score, depth - 1)[:depth] if depth < n else np.arange(n)
        candidates = candidates[np.isfinite(score[candidates])]
        if not len(candidates):
            return []
        final = score[candidates] + SESSION_WEIGHT * session_strength(self, candidates, score)
        if NEIGHBOR_WEIGHT:
            finite = np.where(np.isfinite(score), score, 0.0)
            before, after = self.prev[candidates], self.next[candidates]
            near = np.maximum(
                np.where(before >= 0, finite[np.maximum(before, 0)], 0.0),
                np.where(after >= 0, finite[np.maximum(after, 0)], 0.0),
            )
            final = final + NEIGHBOR_WEIGHT * near
        chosen = diversified(self, candidates, final, k, SESSION_REPEAT_PENALTY if plan.asks_many else 0.0)
        return [Ranked(self.ids[candidates[i]], score, int(candidates[i])) for i, score in chosen]

    def _author_terms(self, plan: QueryPlan) -> set[str]:
        return {term for name in plan.named_authors for term in tokenize(name)}

    def _semantic(self, query_vector: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Similarity of `rows` to the query (the memory alone mixed with memory-plus-previous),
        and the raw cosine of the memory alone."""
        n = len(self.ids)
        if len(rows) == n:
            everything = self.vectors[:n] @ query_vector
            own, before = everything, everything[np.maximum(self.prev[:n], 0)]
        else:
            own = self.vectors[rows] @ query_vector
            before = self.vectors[np.maximum(self.prev[rows], 0)] @ query_vector
        prev = self.prev[rows]
        with_context = np.where(prev >= 0, own + CONTEXT_GAMMA * before, own) / self.context_norm[rows]
        return np.asarray((1 - CONTEXT_MIX) * own + CONTEXT_MIX * with_context, dtype=np.float32), own

    def _sample(self, alive: np.ndarray, size: int = 2048) -> np.ndarray:
        rows = np.flatnonzero(alive)
        if len(rows) <= size:
            return rows
        return rows[np.linspace(0, len(rows) - 1, size).astype(np.int64)]



def _unit_max(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if len(values) else 0.0
    return values / top if top > 0 else values
