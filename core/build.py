"""The one place a Core is put together: config + MongoDB + Chroma + embedder (+ media)."""

from __future__ import annotations

from typing import Any

from core.answer import Answerer
from core.channel_settings import SettingsRepo
from core.config import CoreConfig
from core.engine import Core
from core.facts import FactStore
from core.learning import Learner
from core.media import MediaReader
from core.memory.index import MemoryIndex
from core.metrics import Metrics
from core.pipeline.worker import new_worker_id
from core.services import Services
from core.store import Store
from core.tasks import OrderedRunner


def build(
    config: CoreConfig,
    mongo: Any,
    chroma: Any,
    embedder: Any,
    *,
    db_name: str = "mnemo",
    media: MediaReader | None = None,
    answerer: Answerer | None = None,
) -> Core:
    """A Core over the MongoDB client `mongo` (database `db_name`) and the Chroma client
    `chroma`, embedding with `embedder`. Not started: `await core.start()`."""
    store = Store(mongo, db_name)
    index = MemoryIndex(chroma, embedder)
    services = Services(
        config=config, store=store, index=index, answerer=answerer or Answerer(config),
        media=media or MediaReader(config), settings=SettingsRepo(store), facts=FactStore(store, index),
        metrics=Metrics(), runner=OrderedRunner(), worker_id=new_worker_id(),
    )
    services.learner = Learner(services)
    return Core(services)
