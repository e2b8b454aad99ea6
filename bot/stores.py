"""Open MongoDB (embedded SecantusDB or MONGODB_URI) and Chroma (embedded or CHROMA_URL)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pymongo import AsyncMongoClient

from bot.config import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass
class Stores:
    mongo: AsyncMongoClient[dict[str, Any]]
    chroma: Any
    embedded_server: Any = None
    data_dir_lock: DataDirLock | None = None

    async def close(self) -> None:
        await self.mongo.close()
        if self.embedded_server is not None:
            await asyncio.to_thread(self.embedded_server.stop)
        if self.data_dir_lock is not None:
            self.data_dir_lock.release()


class DataDirLock:
    """One process at a time on a data dir's embedded stores: neither SecantusDB's storage
    nor Chroma's PersistentClient may be opened by two processes. An exclusive `flock` on
    `<data dir>/mnemo.lock` (released by the kernel when the process dies, so never stale),
    with the holder's pid and command line in the file for the message the next one prints."""

    FILE_NAME = "mnemo.lock"

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / self.FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"MNEMO_DATA_DIR: {self.path.parent} is in use by {holder}; stop it, or point "
                "MNEMO_DATA_DIR at another folder"
            ) from None
        command = " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({command})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


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


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data dir (owner-only: it holds everyone's memories) or say why not, in one line."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = data_dir / ".mnemo-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"MNEMO_DATA_DIR: cannot use {data_dir} ({exc.strerror or exc})") from None


async def open_stores(settings: Settings) -> Stores:
    lock = None
    uri = settings.mongodb_uri
    if uri is None or not settings.chroma_url:  # an embedded store lives in the data dir
        prepare_data_dir(settings.data_dir)
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
    try:
        stores = await _open(settings, uri)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    stores.data_dir_lock = lock
    return stores


async def _open(settings: Settings, uri: str | None) -> Stores:
    server = None
    if uri is None:
        server = await asyncio.to_thread(start_embedded_mongo, settings.data_dir)
        uri = server.uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
    try:
        await client.admin.command("ping")
    except Exception as exc:  # noqa: BLE001 - any failure becomes the one-line ConfigError below
        await client.close()
        if server is not None:
            server.stop()
        raise ConfigError(f"MONGODB_URI: cannot reach MongoDB ({type(exc).__name__})") from None
    try:
        chroma = await asyncio.to_thread(open_chroma, settings)
        if settings.chroma_url:
            await asyncio.to_thread(chroma.heartbeat)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the one-line ConfigError below
        await client.close()
        if server is not None:
            server.stop()
        raise ConfigError(f"CHROMA_URL: cannot open Chroma ({type(exc).__name__}: {exc})") from None
    return Stores(client, chroma, server)
