"""A lost or stale memory index (Chroma) is rebuilt from MongoDB when a worker starts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.memory.index import collection_name
from core.memory.rebuild import missing_ids, rebuild_missing
from core.models import Scope, utcnow
from tests.conftest import run_chat
from tests.test_core import core_with, msg


def _embedded(base_env: dict[str, str]) -> dict[str, str]:
    env = dict(base_env)
    env.pop("MONGODB_URI")  # the default store, inside the `mnemo chat` process
    return env


def test_a_deleted_chroma_directory_is_rebuilt_at_start_and_the_memory_cited(
    base_env: dict[str, str], data_dir: Path
) -> None:
    env = _embedded(base_env)
    told = run_chat(["my locker number is 4817", "the bike lock code is 1357"], env, "--user", "max")
    assert told.returncode == 0, told.stderr
    shutil.rmtree(data_dir / "chroma")
    asked = run_chat(["what is my bike lock code?"], env, "--user", "max")
    assert asked.returncode == 0, asked.stderr
    assert "missing 2 memories" in asked.stderr and "rebuilt: 2 memories" in asked.stderr, asked.stderr
    assert "1357" in asked.stdout and "[1]" in asked.stdout, asked.stdout
    # Whole again: the next start finds nothing to do.
    again = run_chat(["what is my locker number?"], env, "--user", "max")
    assert "4817" in again.stdout and "missing" not in again.stderr, again.stderr


async def test_memories_and_facts_missing_from_their_collection_are_indexed_again(make_core: Any) -> None:
    core, _ = await core_with(make_core)
    for i, text in enumerate(["my sister lives in Lyon", "the wifi password is tulip42", "I play the cello"]):
        await core.handle(msg(text, mid=str(i)))
    scope = Scope("dm", "test", "u1")
    stored = await core.store.messages.find_one({"text": "the wifi password is tulip42"})
    fact = await core.facts.add(text="U1 plays the cello", about="U1", about_key="test:u1", scope=scope.key,
                                conversation_key="test:dm-u1", sources=[stored["_id"]], valid_from=utcnow())
    assert await missing_ids(core.store, core.index) == {}
    # Behind: a restored older Chroma, say, lacks one message and the fact.
    collection = core.index.chroma.get_collection(collection_name(scope))
    collection.delete(ids=[stored["_id"], fact["_id"]])
    behind = await missing_ids(core.store, core.index)
    assert {key: sorted(ids) for key, ids in behind.items()} == {scope.key: sorted([stored["_id"], fact["_id"]])}
    assert await rebuild_missing(core.store, core.index) == 2
    assert await missing_ids(core.store, core.index) == {}
    hits = await core.index.search(scope, "what is the wifi password?", k=3)
    assert hits and hits[0].memory_id == stored["_id"]
    # A worker starting on an empty index (a new directory, same MongoDB) rebuilds it before answering.
    fresh = await make_core()
    assert await fresh.index.count(scope) == 4
