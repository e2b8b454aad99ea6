"""Streamed answers on Discord (real discord.py against the loopback REST API and gateway, a
model that streams over ~6 s): first words sent within 3 s, then edited in place (PATCH);
the final text equal to the unstreamed one; a 429 on an edit still ends complete, once; a
model failure midway leaves only the error reply; a reply a dead worker had half-posted is
completed through its nonce, never doubled."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest

from adapters.discord.adapter import nonce_for
from core.models import Message, utcnow
from core.pipeline.answering import MODEL_DOWN
from core.pipeline.process import INTERRUPTED
from core.store import SENDING, message_doc
from tests.fakes.discord import ALICE, BOB, CHANNEL_ID, FakeDiscord, dm_channel_id
from tests.fakes.llm import FakeLLM
from tests.test_discord import Bot
from tests.test_streaming import FACT, FILLER, QUESTION, slow_answer


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
async def bot(fake: FakeDiscord, fake_llm: FakeLLM, make_core: Any) -> AsyncIterator[Bot]:
    from adapters.discord import DiscordAdapter

    fake_llm.responder = slow_answer
    fake_llm.stream_chunk_delay_s = 0.5
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test")
    adapter = DiscordAdapter(core, token=fake.token, api_base=fake.api_base)
    core.register(adapter)
    task = asyncio.create_task(adapter.run())
    await fake.until(lambda: fake.ready or task.done(), what="the bot to connect")
    if task.done():
        task.result()
    yield Bot(fake, core, adapter, task)
    await adapter.stop()
    await asyncio.wait_for(task, 15)


def created(fake: FakeDiscord, channel: int, since: float) -> list[dict[str, Any]]:
    return [m for m in fake.sent if m["channel_id"] == str(channel) and m["at"] >= since]


def same_but_for_author_and_links(text: str) -> str:
    return re.sub(r"\(<https?://[^>]+>\)", "(link)", text).replace("Alice", "X").replace("Bob", "X")


async def test_discord_answer_is_sent_then_edited_and_ends_as_the_unstreamed_answer(bot: Bot) -> None:
    fake = bot.fake
    await bot.core.settings.set(f"discord:{dm_channel_id(BOB)}", "streaming", "off", "test")
    for who in (ALICE, BOB):
        await bot.say(fake.message(FACT, author=who, dm=True))
    await bot.idle()
    asked_at = time.monotonic()
    question = await bot.say(fake.message(QUESTION, author=ALICE, dm=True))
    await fake.until(lambda: bool(created(fake, dm_channel_id(ALICE), asked_at)), what="first words")
    [first] = created(fake, dm_channel_id(ALICE), asked_at)
    assert first["at"] - asked_at < 3.0, f"first words after {first['at'] - asked_at:.1f} s"
    assert str(first["message_reference"]["message_id"]) == question["id"]
    await bot.idle()
    edits = [e for e in fake.edits if e["id"] == first["id"]]
    assert edits and edits[-1]["at"] - first["at"] >= 2.0
    stamps = [first["at"], *(e["at"] for e in edits)]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(stamps))  # inside 5 per 5 s
    assert not any("[9]" in (e.get("content") or "") for e in edits)

    await bot.say(fake.message(QUESTION, author=BOB, dm=True))
    await bot.idle()
    [streamed] = fake.visible_in(dm_channel_id(ALICE))[-1:]
    [unstreamed] = fake.visible_in(dm_channel_id(BOB))[-1:]
    assert not [e for e in fake.edits if e["id"] in {m["id"] for m in created(fake, dm_channel_id(BOB), asked_at)}]
    assert same_but_for_author_and_links(streamed) == same_but_for_author_and_links(unstreamed)
    assert "flower pot" in streamed and "[1]" in streamed and "[9]" not in streamed
    assert len(created(fake, dm_channel_id(ALICE), asked_at)) == 1


async def test_discord_429_on_edits_still_ends_with_the_complete_answer_once(bot: Bot) -> None:
    fake = bot.fake
    await bot.say(fake.message(FACT))
    await bot.idle()
    fake.rate_limit_edits = 3
    asked_at = time.monotonic()
    await bot.say(fake.message(QUESTION, mention_bot=True))
    await fake.until(lambda: bool(created(fake, CHANNEL_ID, asked_at)), what="first words")
    await bot.idle()
    assert len([e for e in fake.edits if e["status"] == 429]) == 3
    [shown] = fake.visible_in(CHANNEL_ID)
    assert "flower pot" in shown and FILLER.strip() in shown and "[1]" in shown
    assert len(created(fake, CHANNEL_ID, asked_at)) == 1


async def test_discord_model_failing_midway_leaves_only_the_error_reply(bot: Bot, fake_llm: FakeLLM) -> None:
    fake = bot.fake
    await bot.say(fake.message(FACT))
    await bot.idle()
    fake_llm.stream_fail_after = 6
    asked_at = time.monotonic()
    await bot.say(fake.message(QUESTION, mention_bot=True))
    await fake.until(lambda: bool(created(fake, CHANNEL_ID, asked_at)), what="first words")
    await bot.idle()
    assert fake.visible_in(CHANNEL_ID) == [MODEL_DOWN]


async def test_adopted_reply_completes_what_a_dead_worker_sent_through_its_nonce(bot: Bot) -> None:
    """A worker died while its answer was going out: the adopting worker's send carries the
    same nonce, Discord returns the message already created, and it is edited to the answer."""
    fake = bot.fake
    await bot.say(fake.message(FACT))
    await bot.idle()
    question = fake.message(QUESTION, author=BOB, mention_bot=True)
    message = Message("discord", str(CHANNEL_ID), question["id"], str(BOB), "Bob", question["content"],
                      is_dm=False, mentions_bot=True)
    doc = message_doc(message, remember=False, kind="question")
    doc.update(state=SENDING, owner="dead-worker", lease_until=utcnow() - timedelta(seconds=1),
               order_ts=message.ts.timestamp())
    await bot.core.store.insert_message(doc)
    half = fake._message_object(str(CHANNEL_ID), {"content": "From what I remember: The spare"},
                                {"id": "900000000000000001", "username": "mnemo", "discriminator": "0",
                                 "global_name": "Mnemo", "avatar": None, "bot": True, "public_flags": 0})
    fake._nonces[(str(CHANNEL_ID), nonce_for(message, 0))] = half
    fake.shown[half["id"]] = half
    before = len(fake.sent)

    assert await bot.core.recover_stale() == 1
    await fake.until(lambda: "[1]" in half["content"], what="the half-sent answer completed")
    await bot.idle()
    assert len(fake.sent) == before  # nothing new created
    [shown] = fake.visible_in(CHANNEL_ID)
    assert "flower pot" in shown and INTERRUPTED not in shown


async def test_discord_ask_command_streams_into_its_followup(bot: Bot) -> None:
    """An interaction's answer: deferred ("thinking…"), then the first followup carries the
    first words and is edited (PATCH on the interaction webhook) into the final answer."""
    fake = bot.fake
    await bot.say(fake.message(FACT))
    await bot.idle()
    asked_at = time.monotonic()
    fake.dispatch("INTERACTION_CREATE", fake.interaction("ask", {"question": QUESTION}))
    await fake.until(lambda: len(fake.followups) == 1, what="the first followup")
    assert time.monotonic() - asked_at < 3.5
    [callback] = fake.callbacks
    assert callback["type"] == 5  # deferred before any followup
    await bot.idle()
    [followup] = fake.followups
    edits = [e for e in fake.edits if e["id"] == followup["id"] and e["status"] == 200]
    assert edits and "[1]" in edits[-1]["content"] and "flower pot" in edits[-1]["content"]
    assert fake.shown[followup["id"]]["content"] == edits[-1]["content"]
    assert not any(m["channel_id"] == str(CHANNEL_ID) and m["at"] >= asked_at for m in fake.sent)
