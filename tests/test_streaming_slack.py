"""Streamed answers on Slack (real slack-bolt/slack-sdk against the loopback Web API, a model
that streams over ~6 s): the first words posted in the thread within 3 s, then `chat.update`
within the channel's pace; the final text equal to the unstreamed one; a 429 on an update
still ends complete, once; a reply a dead worker had half-posted is completed, not doubled."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from core.models import Message, utcnow
from core.pipeline.answering import MODEL_DOWN
from core.pipeline.process import INTERRUPTED
from core.store import SENDING, message_doc
from tests.fakes.llm import FakeLLM
from tests.fakes.slack import FakeSlack, channel_message
from tests.test_slack import ALICE, BOB, MENTION, SECRET, Bot, start_bot
from tests.test_streaming import FACT, FILLER, QUESTION, slow_answer

CHANNEL_A, CHANNEL_B = "C0STREAM", "C0WHOLE"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    fake.add_user(ALICE, "Alice")
    fake.add_user(BOB, "Bob")
    yield fake
    fake.stop()


@pytest.fixture
async def bot(make_core: Any, fake_slack: FakeSlack, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    fake_llm.responder = slow_answer
    fake_llm.stream_chunk_delay_s = 0.5
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test")
    adapter, http, running = await start_bot(core, fake_slack, signing_secret=SECRET)
    async with aiohttp.ClientSession() as session:
        yield Bot(core, adapter, f"http://127.0.0.1:{http.port}", session)
    await adapter.stop()
    await running
    await http.stop()


def calls_in(fake: FakeSlack, method: str, channel: str, since: float, ok_only: bool = True) -> list[Any]:
    return [c for c in fake.calls_to(method, ok_only) if c.args.get("channel") == channel and c.at >= since]


async def ask(bot: Bot, channel: str) -> dict[str, Any]:
    question = channel_message(channel, BOB, f"{MENTION} {QUESTION}")
    assert (await bot.event(question)).status == 200
    return question


async def test_slack_answer_is_posted_then_updated_and_ends_as_the_unstreamed_answer(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    await bot.core.settings.set(f"slack:{CHANNEL_B}", "streaming", "off", "test")
    for channel in (CHANNEL_A, CHANNEL_B):
        await bot.event(channel_message(channel, ALICE, FACT))
    await bot.settle()
    asked_at = time.monotonic()
    question = await ask(bot, CHANNEL_A)
    [post] = await fake_slack.wait_for(lambda: calls_in(fake_slack, "chat.postMessage", CHANNEL_A, asked_at), 60)
    assert post.at - asked_at < 3.0, f"first words after {post.at - asked_at:.1f} s"
    assert post.args["thread_ts"] == question["ts"]
    assert post.args["metadata"]["event_payload"]["message_key"] == f"slack:{CHANNEL_A}:{question['ts']}"
    await bot.settle()
    updates = calls_in(fake_slack, "chat.update", CHANNEL_A, asked_at)
    assert updates and updates[-1].at - post.at >= 2.0
    calls = [post, *updates]
    assert all(y.at - x.at >= 0.95 for x, y in itertools.pairwise(calls))  # within the channel's pace
    assert not any("[9]" in c.args["text"] for c in calls)

    await ask(bot, CHANNEL_B)
    await bot.settle()
    assert calls_in(fake_slack, "chat.update", CHANNEL_B, 0) == []
    streamed, unstreamed = fake_slack.visible_texts(CHANNEL_A), fake_slack.visible_texts(CHANNEL_B)
    assert len(streamed) == 1
    # The footnote permalinks name each channel's own message; everything else is identical.
    assert [t.split("<https://")[0] for t in streamed] == [t.split("<https://")[0] for t in unstreamed]
    assert "flower pot" in streamed[0] and "[1]" in streamed[0] and "[9]" not in streamed[0]


async def test_slack_429_on_updates_still_ends_with_the_complete_answer_once(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    await bot.event(channel_message(CHANNEL_A, ALICE, FACT))
    await bot.settle()
    fake_slack.rate_limit["chat.update"] = 3
    asked_at = time.monotonic()
    await ask(bot, CHANNEL_A)
    await fake_slack.wait_for(lambda: calls_in(fake_slack, "chat.postMessage", CHANNEL_A, asked_at), 60)
    await bot.settle()
    assert len([c for c in calls_in(fake_slack, "chat.update", CHANNEL_A, asked_at, ok_only=False)
                if c.status == 429]) == 3
    [shown] = fake_slack.visible_texts(CHANNEL_A)
    assert "flower pot" in shown and FILLER.strip() in shown and "[1]" in shown
    assert len(calls_in(fake_slack, "chat.postMessage", CHANNEL_A, asked_at)) == 1


async def test_slack_model_failing_midway_leaves_only_the_error_reply(
    bot: Bot, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    await bot.event(channel_message(CHANNEL_A, ALICE, FACT))
    await bot.settle()
    fake_llm.stream_fail_after = 6
    asked_at = time.monotonic()
    await ask(bot, CHANNEL_A)
    await fake_slack.wait_for(lambda: calls_in(fake_slack, "chat.postMessage", CHANNEL_A, asked_at), 60)
    await bot.settle()
    assert fake_slack.visible_texts(CHANNEL_A) == [MODEL_DOWN]


async def test_adopted_reply_completes_what_a_dead_worker_posted_instead_of_apologising(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    """A worker died while its answer was going out (state SENDING): the worker that adopts
    the message reads the thread back and edits the part already posted."""
    await bot.event(channel_message(CHANNEL_A, ALICE, FACT))
    await bot.settle()
    question = channel_message(CHANNEL_A, BOB, f"{MENTION} {QUESTION}")
    message = Message("slack", CHANNEL_A, question["ts"], BOB, "Bob", question["text"], is_dm=False,
                      mentions_bot=True)
    doc = message_doc(message, remember=False, kind="question")
    doc.update(state=SENDING, owner="dead-worker", lease_until=utcnow() - timedelta(seconds=1),
               order_ts=message.ts.timestamp())
    await bot.core.store.insert_message(doc)
    half = {"type": "message", "user": "UBOT0001", "bot_id": "B0000001", "ts": f"{time.time():.6f}",
            "thread_ts": question["ts"], "text": "From what I remember: The spare",
            "metadata": {"event_type": "mnemo_reply",
                         "event_payload": {"message_key": message.event_key, "part": 0}}}
    fake_slack.messages.setdefault(CHANNEL_A, []).append(half)
    posts_before = len(fake_slack.posts())

    assert await bot.core.recover_stale() == 1
    await bot.settle()
    [shown] = fake_slack.visible_texts(CHANNEL_A)
    assert "flower pot" in shown and "[1]" in shown and INTERRUPTED not in shown
    assert len(fake_slack.posts()) == posts_before  # edited in place, nothing posted twice
    [update] = fake_slack.calls_to("chat.update")
    assert update.args["ts"] == half["ts"]
    replies = fake_slack.calls_to("conversations.replies")
    assert replies and replies[0].args["include_all_metadata"] in (True, "true", "1")


async def test_slack_dm_shows_the_assistant_status_while_thinking_and_clears_it(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    question = channel_message("D0ALICE", ALICE, QUESTION)
    await bot.event(question)
    await bot.settle()
    assert [s["status"] for s in fake_slack.statuses] == ["is thinking…", ""]
    assert all(s["channel_id"] == "D0ALICE" and s["thread_ts"] == question["ts"] for s in fake_slack.statuses)
    [shown] = fake_slack.visible_texts("D0ALICE")
    assert fake_slack.calls_to("assistant.threads.setStatus")[-1].at <= fake_slack.calls_to("chat.update")[-1].at
    assert shown
