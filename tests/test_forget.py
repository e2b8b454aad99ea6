"""A person's own data: forgetting during a memory-index (Chroma) outage tells them it isn't
finished yet (never "done", never "not found"), the deletion is recorded before anything is
deleted and the next start-up finishes it; an export holds nothing from other people's DMs.
Real stores; for the outage, Chroma's directory is removed under the running core."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.commands import FORGET_LATER
from core.models import Message, Scope
from tests.fakes.llm import FakeLLM
from tests.test_core import core_with, msg
from tests.test_web_dashboard import Browser, served, web_port

__all__ = ["served", "web_port"]  # fixtures, shared with tests/test_web_dashboard.py


async def test_a_fact_forgotten_while_chroma_is_down_is_recorded_and_gone_after_a_restart(
    make_core: Any, data_dir: Path
) -> None:
    core, platform = await core_with(make_core)
    scope = Scope("dm", "test", "u1")
    fact = await core.facts.add(text="U1 keeps a spare key under the blue pot", about="U1", about_key="test:u1",
                                scope=scope.key, conversation_key="test:dm-u1", sources=[],
                                valid_from=datetime.now(UTC))
    shutil.rmtree(data_dir / "chroma0")  # the index can no longer be written
    await core.handle(msg(f"/forget {fact['_id']}", mid="f1"))
    reply = platform.sent[-1][1]
    assert reply.text == FORGET_LATER and reply.is_error
    # The next start (on an index that works) finishes the recorded deletion first.
    restarted = await make_core()
    assert await restarted.facts.by_ids([fact["_id"]], [scope]) == {}
    assert await restarted.facts.about("test:u1", [scope]) == []


async def test_forget_all_while_chroma_is_down_also_records_the_facts_others_told_about_the_person(
    make_core: Any, data_dir: Path
) -> None:
    # Regression: /forget all recorded the messages' deletion, failed on Chroma, and never
    # recorded the facts about the person learned from other people's words: they stayed.
    core, platform = await core_with(make_core)
    await core.handle(msg("I moved to Lisbon last spring", mid="m1"))
    group = Scope("group", "test", "club")
    told = await core.facts.add(text="U1 is allergic to peanuts", about="U1", about_key="test:u1",
                                scope=group.key, conversation_key="test:club", sources=[],
                                valid_from=datetime.now(UTC))
    shutil.rmtree(data_dir / "chroma0")
    await core.handle(msg("/forget all", mid="f1"))
    reply = platform.sent[-1][1]
    assert reply.text == FORGET_LATER and reply.is_error
    restarted = await make_core()
    assert await restarted.facts.by_ids([told["_id"]], [group]) == {}
    assert await restarted.facts.about("test:u1", [group, Scope("dm", "test", "u1")]) == []
    assert await restarted.store.count_memories("test:u1") == 0


async def test_the_web_page_says_a_forget_is_unfinished_during_a_chroma_outage(
    served: tuple[Any, str], fake_llm: FakeLLM, make_core: Any, data_dir: Path
) -> None:

    core, base = served
    said = Message(platform="web", conversation_id="dm-sam", message_id="h1", author_id="sam", author_name="sam",
                   text="My gym locker is number 31", is_dm=True, ts=datetime.now(UTC) - timedelta(hours=1))
    assert await core.ingest_history([(said, [])]) == 1
    browser = Browser()
    try:
        await browser.get(await core.web_logins.create_link("web", "sam", "sam", dm_conversation="web:dm-sam"))
        page = await browser.get(f"{base}/me")
        memory_id = page.split('name="id" value="')[1].split('"')[0]
        shutil.rmtree(data_dir / "chroma0")
        answer = await browser.post(f"{base}/me/forget", {"id": memory_id})
        assert "Not found" not in answer and "couldn&#x27;t finish forgetting" in answer, answer
        assert "Forgot 0 items" in answer
    finally:
        await browser.http.close()
    restarted = await make_core()
    total, left = await restarted.store.dashboard.memories_of("web:sam", "", 1, 20)
    assert (total, left) == (0, [])


async def test_an_export_leaves_out_what_others_told_mnemo_about_the_person_in_their_own_dm(
    make_core: Any,
) -> None:
    core, platform = await core_with(make_core)
    now = datetime.now(UTC)
    await core.handle(msg("I moved to Leeds in March", mid="s1"))
    said = await core.store.get_message("test:dm-u1:s1")
    assert said is not None
    mine = await core.facts.add(text="U1 lives in Leeds", about="U1", about_key="test:u1",
                                scope="dm:test:u1", conversation_key="test:dm-u1", sources=[said["_id"]],
                                valid_from=now)
    secret = await core.facts.add(text="U1 is getting a surprise party", about="U1", about_key="test:u1",
                                  scope="dm:test:u2", conversation_key="test:dm-u2", sources=[], valid_from=now)
    await core.handle(msg("/export", mid="s2"))
    export = platform.sent[-1][1].file
    assert export is not None
    facts = {fact["id"] for fact in json.loads(export.data)["facts"]}
    assert mine["_id"] in facts and secret["_id"] not in facts
    assert b"surprise party" not in export.data
