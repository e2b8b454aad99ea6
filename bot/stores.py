"""Open MongoDB (embedded SecantusDB or MONGODB_URI) and Chroma (embedded or CHROMA_URL)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from pymongo import AsyncMongoClient

from bot.config import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass
class Stores:
    mongo: AsyncMongoClient[dict[str, Any]]
    chroma: Any
    embedded_server: Any = None

    async def close(self) -> None:
        await self.mongo.close()
        if self.embedded_server is not None:
            await asyncio.to_thread(self.embedded_server.stop)


class _SpuriousCloseError(logging.Filter):
    """SecantusDB 0.7.0b3 marks its storage closed before its last oplog-meta write, so every
    clean stop logs a "Storage is closed" traceback although all data is durable (it is read
    back by the next start). Drop exactly that record; any other close error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage() == "failed to persist oplog meta during close"
            and isinstance(error, RuntimeError)
            and str(error) == "Storage is closed"
        )


def start_embedded_mongo(data_dir: os.PathLike[str] | str) -> Any:
    """SecantusDB in-process (GPL-2.0, an optional extra: imported only here)."""
    try:
        from secantus import SecantusDBServer
    except ImportError:
        raise ConfigError(
            "MONGODB_URI: not set, and the embedded database is not installed "
            "(pip install 'mnemo-bot[embedded]', or set MONGODB_URI to a MongoDB server)"
        ) from None
    path = os.path.join(os.fspath(data_dir), "mongo")
    os.makedirs(path, exist_ok=True)
    logging.getLogger("secantus.storage.close").addFilter(_SpuriousCloseError())
    server = SecantusDBServer(storage_path=path)
    server.start()
    return server


def open_chroma(settings: Settings) -> Any:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        return chromadb.HttpClient(
            host=url.hostname or "localhost",
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=chroma_settings,
        )
    path = os.path.join(os.fspath(settings.data_dir), "chroma")
    os.makedirs(path, exist_ok=True)
    return chromadb.PersistentClient(path=path, settings=chroma_settings)


def durable_writes(uri: str) -> dict[str, Any]:
    """Journaled writes (w:1, j:true): a write is acknowledged only once it is in the store's
    journal on disk, so what Mnemo confirmed to a platform survives a SIGKILL of the process
    holding the embedded store (without it, WiredTiger's log buffer lost 1-2 acknowledged
    messages in 10 kills). A URI that sets its own write concern keeps it."""
    options = {name.lower() for name in parse_qs(urlparse(uri).query)}
    if options & {"w", "journal", "wtimeoutms"}:
        return {}
    return {"w": 1, "journal": True}


async def open_stores(settings: Settings) -> Stores:
    server = None
    uri = settings.mongodb_uri
    if uri is None:
        os.makedirs(settings.data_dir, exist_ok=True)
        server = await asyncio.to_thread(start_embedded_mongo, settings.data_dir)
        uri = server.uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=10_000, tz_aware=True, **durable_writes(uri)
    )
    try:
        await client.admin.command("ping")
    except Exception as exc:
        await client.close()
        if server is not None:
            server.stop()
        raise ConfigError(f"MONGODB_URI: cannot reach MongoDB ({type(exc).__name__})") from None
    try:
        chroma = await asyncio.to_thread(open_chroma, settings)
        if settings.chroma_url:
            await asyncio.to_thread(chroma.heartbeat)
    except Exception as exc:
        await client.close()
        if server is not None:
            server.stop()
        raise ConfigError(f"CHROMA_URL: cannot open Chroma ({type(exc).__name__}: {exc})") from None
    return Stores(client, chroma, server)
