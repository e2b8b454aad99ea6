"""Lexical and session scores over a scope's view (core.memory.scope_view): BM25 with each
memory read together with the message before it, BM25 of whole sessions, and the strength of
a candidate's session. Functions of the view's arrays, kept apart so the view reads in one sitting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Protocol

import numpy as np

from core.memory.lexical import Postings, bm25, idf, tokenize


class ScopeView(Protocol):
    """What scoring reads of a scope view (core/memory/scope_view.py), per item slot."""

    alive: np.ndarray
    prev: np.ndarray
    next: np.ndarray
    session: np.ndarray
    length: np.ndarray
    alive_count: int
    postings: Postings


def lexical_scores(view: ScopeView, text: str, n: int, ignored: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """BM25 with each memory read together with its previous message in the session, and
    each memory's coverage of the question: the share of the question's terms (weighted by
    idf, an unknown term weighing most) that it or its previous message contains. Terms in
    `ignored` (the names of the people asked about) count for BM25, not for coverage."""
    scores = np.zeros(n, dtype=np.float32)
    covered = np.zeros(n, dtype=np.float32)
    total = 0.0
    alive = view.alive[:n]
    prev = view.prev[:n]
    length = view.length[:n] + np.where(prev >= 0, view.length[np.maximum(prev, 0)], 0)
    avg = float(length[alive].mean()) if view.alive_count else 1.0
    nxt = view.next[:n]
    for term in set(tokenize(text)):
        counted = term not in ignored
        found = view.postings.get(term)
        if found is None:
            total += idf(0, view.alive_count) if counted else 0.0
            continue
        rows, tfs = found
        keep = alive[rows]
        rows, tfs = rows[keep], tfs[keep]
        weight = idf(len(rows), view.alive_count)  # a term's rows are distinct: its df
        if counted:
            total += weight
        if len(rows) == 0:
            continue
        followers = nxt[rows]
        has = followers >= 0
        tf = np.bincount(rows, weights=tfs, minlength=n)
        tf += np.bincount(followers[has], weights=tfs[has], minlength=n)
        hit = np.flatnonzero(tf)
        scores[hit] += bm25(tf[hit], length[hit], avg, len(hit), view.alive_count)
        if counted:
            covered[hit] += weight
    return scores, (covered / total if total > 0 else covered)


def session_lexical_scores(view: ScopeView, text: str, n: int) -> np.ndarray:
    """BM25 of each memory's whole session (the topic of the conversation around it)."""
    alive = view.alive[:n]
    session = view.session[:n]
    sessions = int(session.max()) + 1
    length = np.bincount(session[alive], weights=view.length[:n][alive], minlength=sessions)
    present = length > 0
    avg = float(length[present].mean()) if present.any() else 1.0
    scores = np.zeros(sessions, dtype=np.float32)
    for term in set(tokenize(text)):
        found = view.postings.get(term)
        if found is None:
            continue
        rows, tfs = found
        keep = alive[rows]
        tf = np.bincount(session[rows[keep]], weights=tfs[keep], minlength=sessions)
        hit = np.flatnonzero(tf)
        if len(hit):
            scores[hit] += bm25(tf[hit], length[hit], avg, len(hit), int(present.sum()))
    return scores[session]


def session_strength(view: ScopeView, candidates: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mean of the best three candidate scores in each candidate's session."""
    sessions = view.session[candidates]
    values = score[candidates]
    best: dict[int, list[float]] = {}
    for session, value in sorted(zip(sessions.tolist(), values.tolist()), key=lambda sv: -sv[1]):
        top = best.setdefault(session, [])
        if len(top) < 3:
            top.append(value)
    return np.array([sum(best[s]) / 3 for s in sessions.tolist()], dtype=np.float32)


def diversified(
    view: ScopeView, candidates: np.ndarray, final: np.ndarray, k: int, penalty: float
) -> list[tuple[int, float]]:
    """Positions and scores of the k best, each losing `penalty` per better memory of its
    session already taken (the score says so: callers merging hits sort by it)."""
    order = np.argsort(-final)
    if not penalty:
        return [(int(i), float(final[i])) for i in order[:k]]
    sessions = view.session[candidates].tolist()
    taken: list[tuple[int, float]] = []
    per_session: Counter[int] = Counter()
    pending = [int(i) for i in order[: 4 * k + 20]]
    while pending and len(taken) < k:
        best = max(pending, key=lambda i: final[i] - penalty * per_session[sessions[i]])
        pending.remove(best)
        # Never above an earlier pick: the scores stay in the order chosen.
        score = float(final[best]) - penalty * per_session[sessions[best]]
        taken.append((best, min(score, taken[-1][1]) if taken else score))
        per_session[sessions[best]] += 1
    return taken
