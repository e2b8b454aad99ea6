"""Lexical and session scores over a scope's view (core.memory.scope_view): BM25 with each
memory read together with the message before it, BM25 of whole sessions, and the strength of
a candidate's session. Functions of the view's arrays, kept apart so the view reads in one sitting.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import numpy as np

from core.memory.lexical import bm25, idf, tokenize

if TYPE_CHECKING:
    from core.memory.scope_view import ScopeView


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
