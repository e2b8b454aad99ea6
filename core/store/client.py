"""The MongoDB client: opened and pinged here, so nothing outside core/store/ imports pymongo."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from core.store.monitoring import COMMANDS

MongoClient = AsyncMongoClient[dict[str, Any]]


def open_client(uri: str, **options: Any) -> MongoClient:
    """A client with timezone-aware datetimes (every stored time is UTC) whose commands are
    counted for /metrics (see core/store/monitoring.py)."""
    return AsyncMongoClient(uri, tz_aware=True, event_listeners=[COMMANDS], **options)


async def ping(client: MongoClient) -> None:
    """Raises when the server cannot be reached."""
    await client.admin.command("ping")
