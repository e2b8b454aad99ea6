"""What the pipeline's stages share: the stores, the models and the worker's identity.

Stages (core/pipeline/), commands, ingest and learning receive this, never `Core`: they see
the parts they need and nothing of the facade's lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from core.answer import Answerer
from core.channel_settings import SettingsRepo
from core.config import CoreConfig
from core.facts import FactStore
from core.media import MediaReader
from core.memory.index import MemoryIndex
from core.metrics import Metrics
from core.models import Message
from core.platform import Platform
from core.store import Store
from core.tasks import OrderedRunner


class Learning(Protocol):
    """What the pipeline and /profile use of core.learning.Learner (which receives Services)."""

    @property
    def enabled(self) -> bool: ...

    def note(self, message: Message) -> None: ...

    async def flush(self, conversation_keys: list[str]) -> None: ...

    async def close(self, timeout: float = 30.0) -> None: ...


class _NoLearning:
    enabled = False

    def note(self, message: Message) -> None:
        pass

    async def flush(self, conversation_keys: list[str]) -> None:
        pass

    async def close(self, timeout: float = 30.0) -> None:
        pass


@dataclass
class Services:
    config: CoreConfig
    store: Store
    index: MemoryIndex
    answerer: Answerer
    media: MediaReader
    settings: SettingsRepo
    facts: FactStore
    metrics: Metrics
    runner: OrderedRunner
    worker_id: str  # which worker holds a message (MongoDB `owner`)
    platforms: dict[str, Platform] = field(default_factory=dict)
    # Set by core.build once the Learner (which itself receives these services) exists.
    learner: Learning = field(default_factory=_NoLearning)
    draining: bool = False  # taking no new work (Core.drain)

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.config.lease_seconds)
