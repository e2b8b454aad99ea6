"""An in-memory view of one scope's memories, and the ranking that runs over it.

Chroma holds the scope's memories (documents, metadata, vectors); this view mirrors one scope
in numpy arrays so a query is scored exactly, over every memory, in a few vector operations:

- lexical: BM25 where each memory is read together with the message before it in the same
  conversation session ("Where did you go?" / "Lisbon!" — the answer alone says little);
- semantic: cosine of the question with the memory's vector and with the memory-plus-previous
  context vector (computed from the two stored vectors, no second embedding);
- both scores normalized per query and mixed, then: memories by the people the question names
  are preferred; "when" questions prefer memories that mention a time; questions about a time
  ("last week", "in May") prefer memories from then; and a memory gains from the best other
  candidates of its session (conversations stay on a topic for a while).

The view is private to one process and rebuilt from Chroma when its size differs from the
collection's (another worker wrote to the scope); it is updated in place by this process's
own writes. Never shared across scopes.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.memory.lexical import Postings, bm25, tokenize
from core.memory.query import QueryPlan, mentions_time

# Messages of one conversation more than this far apart belong to different sessions.
SESSION_GAP_S = 2 * 3600
# Ranking weights, tuned on LoCoMo dev conversations (bench/locomo.py), flat around these values.
LEXICAL_WEIGHT = 0.5
CONTEXT_MIX = 0.5  # share of the semantic score taken from the memory-plus-previous vector
CONTEXT_GAMMA = 0.8  # weight of the previous message in that context vector
AUTHOR_BONUS = 0.35
TIME_MENTION_BONUS = 0.2
TIME_WINDOW_BONUS = 0.2
SESSION_WEIGHT = 0.3
CANDIDATES = 200


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

    def __len__(self) -> int:
        return self.alive_count

    @property
    def dead(self) -> int:
        return len(self.ids) - self.alive_count

    # -- writes -------------------------------------------------------------------------

    def _grow(self) -> None:
        capacity = len(self.alive) * 2
        for name in ("alive", "ts", "prev", "next", "session", "context_norm", "length", "has_time", "author"):
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
        counts = Counter(tokenize(document))
        self.postings.add(row, counts)
        self.length[row] = sum(counts.values())
        self.vectors[row] = vector
        self.alive[row] = True
        self.alive_count += 1
        ts = float(metadata.get("ts") or 0.0)
        self.ts[row] = ts
        self.has_time[row] = mentions_time(document)
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
        times, rows = self._by_conversation[str(self.metadatas[row].get("conversation_key") or "")]
        at = rows.index(row)
        del times[at]
        del rows[at]
        before, after = int(self.prev[row]), int(self.next[row])
        self._link(row, -1)
        if after >= 0:
            self._link(after, before)

    # -- search -------------------------------------------------------------------------

    def search(self, plan: QueryPlan, query_vector: np.ndarray, k: int) -> list[Ranked]:
        n = len(self.ids)
        if self.alive_count == 0:
            return []
        alive = self.alive[:n]
        score = LEXICAL_WEIGHT * _unit_max(self._lexical(plan.text, n))
        semantic = _standardize(self._semantic(query_vector, n), alive)
        semantic[~alive] = 0.0
        score += (1 - LEXICAL_WEIGHT) * _unit_max(semantic)
        if plan.named_authors:
            named = [self._author_index[a] for a in plan.named_authors if a in self._author_index]
            if named:
                score += AUTHOR_BONUS * np.isin(self.author[:n], named)
        if plan.asks_when:
            score += TIME_MENTION_BONUS * self.has_time[:n]
        if plan.window is not None:
            start, end = plan.window
            score += TIME_WINDOW_BONUS * ((self.ts[:n] >= start) & (self.ts[:n] < end))
        score[~alive] = -np.inf
        depth = min(CANDIDATES, self.alive_count)
        candidates = np.argpartition(-score, depth - 1)[:depth] if depth < n else np.arange(n)
        candidates = candidates[np.isfinite(score[candidates])]
        final = score[candidates] + SESSION_WEIGHT * self._session_strength(candidates, score)
        order = np.argsort(-final)[:k]
        return [Ranked(self.ids[candidates[i]], float(final[i]), int(candidates[i])) for i in order]

    def _lexical(self, text: str, n: int) -> np.ndarray:
        """BM25 with each memory read together with its previous message in the session."""
        scores = np.zeros(n, dtype=np.float32)
        alive = self.alive[:n]
        prev = self.prev[:n]
        length = self.length[:n] + np.where(prev >= 0, self.length[np.maximum(prev, 0)], 0)
        avg = float(length[alive].mean()) if self.alive_count else 1.0
        nxt = self.next[:n]
        for term in set(tokenize(text)):
            found = self.postings.get(term)
            if found is None:
                continue
            rows, tfs = found
            keep = alive[rows]
            rows, tfs = rows[keep], tfs[keep]
            if len(rows) == 0:
                continue
            followers = nxt[rows]
            has = followers >= 0
            tf = np.bincount(rows, weights=tfs, minlength=n)
            tf += np.bincount(followers[has], weights=tfs[has], minlength=n)
            hit = np.flatnonzero(tf)
            scores[hit] += bm25(tf[hit], length[hit], avg, len(hit), self.alive_count)
        return scores

    def _semantic(self, query_vector: np.ndarray, n: int) -> np.ndarray:
        own = self.vectors[:n] @ query_vector
        prev = self.prev[:n]
        with_context = np.where(prev >= 0, (own + CONTEXT_GAMMA * own[np.maximum(prev, 0)]), own)
        with_context = with_context / self.context_norm[:n]
        return np.asarray((1 - CONTEXT_MIX) * own + CONTEXT_MIX * with_context, dtype=np.float32)

    def _session_strength(self, candidates: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Mean of the best three candidate scores in each candidate's session."""
        sessions = self.session[candidates]
        values = score[candidates]
        best: dict[int, list[float]] = {}
        for session, value in sorted(zip(sessions.tolist(), values.tolist()), key=lambda sv: -sv[1]):
            top = best.setdefault(session, [])
            if len(top) < 3:
                top.append(value)
        return np.array([sum(best[s]) / 3 for s in sessions.tolist()], dtype=np.float32)


def _unit_max(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if len(values) else 0.0
    return values / top if top > 0 else values


def _standardize(values: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """z-scores over the live memories (cosines sit in a narrow band that differs per query)."""
    live = values[alive]
    if len(live) == 0:
        return values
    return (values - live.mean()) / (live.std() + 1e-9)
