"""An in-memory BM25 index for one scope (the lexical half of hybrid retrieval).

Kept per process and rebuilt from Chroma when missing or stale; Chroma and MongoDB stay the
sources of truth, so workers share nothing but the stores.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[\w']+", re.UNICODE)
STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been being
    do does did doing have has had having i me my mine we us our you your he him his she her it its they
    them their what which who whom whose this that these those am will would shall should can could may
    might must not no nor too very just than there here when where why how all any both each few more
    most other some such only own same into over under again further once about above below up down out
    off s t don't i'm it's that's what's""".split()
)


def stem(token: str) -> str:
    """A light suffix stripper: enough to match 'painting'/'paints'/'painted'."""
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "s", "ly"):
        if len(token) > len(suffix) + 2 and token.endswith(suffix):
            if suffix in ("ies", "ied"):
                return token[: -len(suffix)] + "y"
            return token[: -len(suffix)]
    return token


def tokenize(text: str) -> list[str]:
    tokens = []
    for raw in _TOKEN.findall(text.lower()):
        raw = raw.strip("'")
        if raw.endswith("'s"):
            raw = raw[:-2]
        if not raw or raw in STOPWORDS:
            continue
        tokens.append(stem(raw))
    return tokens


class BM25Index:
    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self.postings: dict[str, dict[str, int]] = defaultdict(dict)
        self.doc_len: dict[str, int] = {}
        self.total_len = 0

    def __len__(self) -> int:
        return len(self.doc_len)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.doc_len

    def add(self, doc_id: str, text: str) -> None:
        if doc_id in self.doc_len:
            self.remove(doc_id)
        counts = Counter(tokenize(text))
        for term, tf in counts.items():
            self.postings[term][doc_id] = tf
        length = sum(counts.values())
        self.doc_len[doc_id] = length
        self.total_len += length

    def remove(self, doc_id: str) -> None:
        length = self.doc_len.pop(doc_id, None)
        if length is None:
            return
        self.total_len -= length
        for term in list(self.postings):
            posting = self.postings[term]
            if posting.pop(doc_id, None) is not None and not posting:
                del self.postings[term]

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        n = len(self.doc_len)
        if n == 0:
            return []
        avg = self.total_len / n or 1.0
        scores: dict[str, float] = defaultdict(float)
        for term in set(tokenize(query)):
            posting = self.postings.get(term)
            if not posting:
                continue
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for doc_id, tf in posting.items():
                norm = tf + self.k1 * (1 - self.b + self.b * self.doc_len[doc_id] / avg)
                scores[doc_id] += idf * tf * (self.k1 + 1) / norm
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        return ranked[:k]
