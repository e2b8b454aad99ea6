"""Lexical matching: a tokenizer and incremental postings for BM25 over one scope.

Postings are appended as memories arrive (no rebuild per write) and turned into numpy
arrays lazily, per term, when a query needs them; scoring is vectorized, so a query over a
100,000-memory scope costs a few array operations per query term.
"""

from __future__ import annotations

import re

import numpy as np

_TOKEN = re.compile(r"[\w']+", re.UNICODE)
STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "but", "if", "then", "so", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "doing", "have", "has", "had", "having", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they", "them", "their", "what", "which", "who", "whom", "whose", "this", "that", "these", "those", "am", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "not", "no", "nor", "too", "very", "just", "than", "there", "here", "when", "where", "why", "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "only", "own", "same", "into", "over", "under", "again", "further", "once", "about", "above", "below", "up", "down", "out", "off", "s", "t", "don't", "i'm", "it's", "that's", "what's"]
)


def stem(token: str) -> str:
    """A light suffix stripper: enough to match 'painting'/'paints'/'painted'."""
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "s", "ly"):
        if len(token) > len(suffix) + 2 and token.endswith(suffix):
            if suffix in ("ies", "ied"):
                return token[: -len(suffix)] + "y"
            return token[: -len(suffix)]
    return token


def words(text: str) -> list[str]:
    """Lower-cased words with possessive 's removed (no stemming, stopwords kept)."""
    found = []
    for raw in _TOKEN.findall(text.lower()):
        raw = raw.strip("'")
        raw = raw.removesuffix("'s")
        if raw:
            found.append(raw)
    return found


def tokenize(text: str) -> list[str]:
    return [stem(word) for word in words(text) if word not in STOPWORDS]


class Postings:
    """term -> (rows, term frequencies), append-only; dead rows are masked at query time."""

    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}
        self._tfs: dict[str, list[int]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, row: int, counts: dict[str, int]) -> None:
        for term, tf in counts.items():
            self._rows.setdefault(term, []).append(row)
            self._tfs.setdefault(term, []).append(tf)

    def get(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        rows = self._rows.get(term)
        if rows is None:
            return None
        cached = self._arrays.get(term)
        if cached is None or len(cached[0]) != len(rows):
            cached = (np.asarray(rows, dtype=np.int64), np.asarray(self._tfs[term], dtype=np.float32))
            self._arrays[term] = cached
        return cached


def idf(df: int, n_docs: int) -> float:
    """BM25's inverse document frequency of a term found in `df` of `n_docs` documents."""
    return float(np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)))


def bm25(
    tf: np.ndarray,
    doc_len: np.ndarray,
    avg_len: float,
    df: int,
    n_docs: int,
    k1: float = 1.2,
    b: float = 0.75,
) -> np.ndarray:
    """Okapi BM25 of one term for rows with term frequency `tf` (arrays over the same rows)."""
    return idf(df, n_docs) * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * doc_len / max(avg_len, 1e-9)))
