"""What the core needs to know, as plain values (the bot's pydantic settings map onto it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CoreConfig:
    data_dir: Path
    model: str | None = None
    reasoning_model: str | None = None
    learning_model: str | None = None  # learns facts about people (core.learning); unset: `model`
    llm_api_base: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = 60.0
    llm_retries: int = 2
    stt_model: str = "local"
    vision_model: str | None = None
    max_file_bytes: int = 20 * 1024 * 1024
    max_audio_seconds: float = 600.0
    bot_name: str = "Mnemo"
    recall_k: int = 8  # memories shown to the model
    retrieval_only_k: int = 5  # memories listed when no model is configured
    context_turns: int = 8  # earlier turns of the conversation (replies included) in each prompt
    lease_seconds: float = 120.0  # a worker that stops renewing its messages for this long is presumed dead
    max_attempts: int = 3  # a message that crashed this many workers is failed with a reply, not retried
    media_concurrency: int = 1  # CPU-heavy media jobs at once (2-core machines)
    public_url: str | None = None  # the web UI's base URL: enables /dashboard links
