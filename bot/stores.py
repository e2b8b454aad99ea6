"""Open MongoDB (embedded SecantusDB or MONGODB_URI) and Chroma (embedded or CHROMA_URL)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

from bot.config import ConfigError, Settings
from core.store.client import MongoClient, open_client, ping

log = logging.getLogger(__name__)
EMBEDDED_USER = "mnemo"


@dataclass
class Stores:
    mongo: MongoClient
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


def private_dir(path: os.PathLike[str] | str) -> str:
    """A directory only this OS user can enter (0700): it holds every DM. An unusable path
    stops start-up with one line naming it."""
    path = os.fspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        raise ConfigError(f"MNEMO_DATA_DIR: cannot use {path} ({exc.strerror or exc})") from None
    return path


def _embedded_password(data_dir: str) -> str:
    """The embedded store's generated password, kept 0600 in the data dir."""
    path = os.path.join(data_dir, "mongo-credentials")
    try:
        with open(path, encoding="ascii") as file:
            found = file.read().strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(password + "\n")
    return password


def start_embedded_mongo(data_dir: os.PathLike[str] | str) -> Any:
    """SecantusDB in-process (GPL-2.0, an optional extra: imported only here). It listens on a
    loopback port (it has no unix socket), so it requires a login: a user with a generated
    password (kept 0600 in the 0700 data dir), so other local users and processes cannot read
    the store."""
    try:
        from secantus import SecantusDBServer
        from secantus.auth import SCRAM_SHA_256, derive_credentials
    except ImportError:
        raise ConfigError(
            "MONGODB_URI: not set, and the embedded database is not installed "
            "(pip install 'mnemo-bot[embedded]', or set MONGODB_URI to a MongoDB server)"
        ) from None
    home = private_dir(data_dir)
    path = private_dir(os.path.join(home, "mongo"))
    password = _embedded_password(home)
    logging.getLogger("secantus.storage.close").addFilter(_SpuriousCloseError())
    server = SecantusDBServer(storage_path=path, require_auth=True, enable_test_commands=False)
    credentials = derive_credentials(password, mechanism=SCRAM_SHA_256, username=EMBEDDED_USER).to_doc()
    server.storage.add_user("admin", EMBEDDED_USER, {
        "_id": f"admin.{EMBEDDED_USER}", "user": EMBEDDED_USER, "db": "admin", "credentials": credentials,
        "roles": [{"role": "root", "db": "admin"}], "mechanisms": [SCRAM_SHA_256],
    }, replace=True)
    server.start()
    host, port = server.address
    server.login_uri = f"mongodb://{EMBEDDED_USER}:{quote(password)}@{host}:{port}/?authSource=admin"
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
    path = private_dir(os.path.join(private_dir(settings.data_dir), "chroma"))
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
        uri = server.login_uri
    client = open_client(uri, serverSelectionTimeoutMS=10_000, **durable_writes(uri))
    try:
        await ping(client)
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
