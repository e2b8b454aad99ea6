"""Shared fixtures: real embedded MongoDB (SecantusDB) and Chroma, a loopback model server,
and helpers to run `mnemo` as a user would (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.fakes.llm import FakeLLM

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real MongoDB wire-protocol server for the session (or MONGODB_URI if given)."""
    if os.environ.get("MNEMO_TEST_MONGODB_URI"):
        yield type("External", (), {"uri": os.environ["MNEMO_TEST_MONGODB_URI"]})()
        return
    from secantus import SecantusDBServer

    server = SecantusDBServer(storage_path=str(tmp_path_factory.mktemp("mongo")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_uri(mongo_server: Any) -> str:
    return str(mongo_server.uri)


@pytest.fixture
def db_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    llm = FakeLLM().start()
    yield llm
    llm.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def base_env(data_dir: Path, mongo_uri: str, db_name: str) -> dict[str, str]:
    """Environment for a `mnemo` subprocess: real stores, no platform, no model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNEMO_", "TELEGRAM_", "DISCORD_", "SLACK_"))}
    env.pop("MONGODB_URI", None)
    env.pop("CHROMA_URL", None)
    env.update(
        {
            "MNEMO_DATA_DIR": str(data_dir),
            "MONGODB_URI": mongo_uri,
            "MNEMO_MONGODB_DB": db_name,
            "MNEMO_HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_chat(
    lines: list[str], env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run `mnemo chat ARGS` with `lines` on stdin (a pipe); returns the finished process."""
    return subprocess.run(  # the caller asserts on the exit code
        [sys.executable, "-m", "bot.cli", "chat", *args],
        check=False,
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=timeout,
    )


@pytest.fixture
def shared_embedder() -> Any:
    return _embedder()


_EMBEDDER: Any = None


def _embedder() -> Any:
    """The local model loads once per test session (it takes seconds)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from core.memory.embedder import LocalEmbedder

        _EMBEDDER = LocalEmbedder()
    return _EMBEDDER


@pytest.fixture
async def make_core(mongo_uri: str, db_name: str, data_dir: Path) -> AsyncIterator[Any]:
    """Build an in-process Core on the real stores: `await make_core(model=..., **config)`."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from pymongo import AsyncMongoClient

    from core.build import build
    from core.config import CoreConfig
    from core.engine import Core

    made: list[tuple[Core, Any]] = []

    async def factory(**config: Any) -> Core:
        client: Any = AsyncMongoClient(mongo_uri, tz_aware=True)
        chroma = chromadb.PersistentClient(
            path=str(data_dir / f"chroma{len(made)}"), settings=ChromaSettings(anonymized_telemetry=False)
        )
        core = build(CoreConfig(data_dir=data_dir, **config), client, chroma, _embedder(), db_name=db_name)
        await core.start(background=False)
        made.append((core, client))
        return core

    yield factory
    for core, client in made:
        await core.close()
        await client.close()
