"""Streamed answers over the wire: the real SDKs against the loopback platforms, and a
loopback model that streams its answer slowly (server-sent events over ~6 s).

What people notice: the first words appear within 3 s of the question and well before the
end; the final message is exactly the non-streamed one (same question, streaming off);
edits stay within the platform's limits; a 429 or a model failure midway never leaves a
partial or doubled answer; a hung model gets the clear reply after one deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest

from core.models import utcnow
from core.pipeline.answering import MODEL_DOWN
from core.pipeline.process import INTERRUPTED
from tests.fakes.llm import FakeLLM, grounded_answer, learning_request
from tests.fakes.telegram import BOT_USERNAME, FakeTelegram, mention_entity, private_chat, supergroup, user
from tests.test_telegram import Running, eventually

SAM_A = user(401, "Sam")
SAM_B = user(402, "Sam")  # same name, another person: the same answer, without streaming
GROUP_A = supergroup(-1001111111111, "Streams")
GROUP_B = supergroup(-1002222222222, "Streams")
FACT = "The spare key is under the blue flower pot by the door"
QUESTION = "where is the spare key?"
MENTION = f"@{BOT_USERNAME}"
FILLER = ("I hope that helps you get in without waiting for anyone. If it is not there, ask the neighbours, "
          "they were given a copy last spring when the locks were changed. ")


def slow_answer(messages: list[dict[str, Any]]) -> str:
    """A grounded answer with a marker that matches no source ([9]) and some length."""
    return f"{grounded_answer(messages)} {FILLER}Nothing else is noted about keys [9]."


@pytest.fixture
def slow_llm(fake_llm: FakeLLM) -> FakeLLM:
    fake_llm.responder = slow_answer
    fake_llm.stream_pieces = 12
    fake_llm.stream_chunk_delay_s = 0.5  # ~6 s from the first token to the last
    return fake_llm


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
async def tg(make_core: Any, slow_llm: FakeLLM, telegram: FakeTelegram) -> AsyncIterator[Running]:
    running = Running(make_core, slow_llm, telegram)
    yield running
    await running.stop_all()


def ask_in_group(fake: FakeTelegram, group: dict[str, Any], who: dict[str, Any]) -> dict[str, Any]:
    text = f"{MENTION} {QUESTION}"
    return fake.push(fake.message(group, who, text, entities=[mention_entity(text, MENTION)]))


async def tell_and_wait(fake: FakeTelegram, chat: dict[str, Any], who: dict[str, Any]) -> None:
    """A fact told in a DM; wait for its acknowledgement (the first may wait for the embedder)."""
    before = len(fake.sent_messages(chat["id"]))
    fake.push(fake.message(chat, who, FACT))
    await eventually(lambda: len(fake.sent_messages(chat["id"])) > before, 180, "acknowledgement")


def answer_calls(fake: FakeTelegram, chat_id: int, method: str, since: float) -> list[Any]:
    return [c for c in fake.calls_to(method) if c.params.get("chat_id") == chat_id and c.at >= since]


async def test_telegram_dm_streams_a_draft_then_sends_exactly_the_unstreamed_answer(
    tg: Running, telegram: FakeTelegram
) -> None:
    await tg.start()
    a, b = private_chat(SAM_A), private_chat(SAM_B)
    await tell_and_wait(telegram, a, SAM_A)
    await tell_and_wait(telegram, b, SAM_B)
    assert tg.core is not None
    await tg.core.settings.set(f"telegram:{b['id']}", "streaming", "off", "test")

    asked_at = time.monotonic()
    telegram.push(telegram.message(a, SAM_A, QUESTION))
    drafts = await eventually(lambda: answer_calls(telegram, a["id"], "sendMessageDraft", asked_at), 30, "a draft")
    final = await eventually(lambda: answer_calls(telegram, a["id"], "sendMessage", asked_at), 30, "the answer")
    drafts = answer_calls(telegram, a["id"], "sendMessageDraft", asked_at)

    first_visible = drafts[0].at - asked_at
    assert first_visible < 3.0, f"first words after {first_visible:.1f} s"
    assert final[0].at - drafts[0].at >= 2.0
    assert len(drafts) >= 2 and all(y.at - x.at >= 0.95 for x, y in itertools.pairwise(drafts))
    # While streaming, a marker that matches no source is never shown.
    assert not any("[9]" in d.params["text"] for d in drafts)
    assert len({d.params["draft_id"] for d in drafts}) == 1

    await asyncio.sleep(4.5)  # long enough for a forgotten typing loop to show itself
    unstreamed_at = time.monotonic()
    telegram.push(telegram.message(b, SAM_B, QUESTION))
    await eventually(lambda: answer_calls(telegram, b["id"], "sendMessage", final[0].at), 60, "unstreamed answer")
    assert answer_calls(telegram, b["id"], "sendMessageDraft", final[0].at) == []
    streamed, unstreamed = telegram.visible_texts(a["id"])[-1], telegram.visible_texts(b["id"])[-1]
    assert streamed == unstreamed
    assert "flower pot" in streamed and "[1]" in streamed and "[9]" not in streamed
    assert len(answer_calls(telegram, a["id"], "sendMessage", asked_at)) == 1
    # "typing…" while Mnemo worked (renewed every 4 s), and no more once the answer was sent.
    typing = answer_calls(telegram, a["id"], "sendChatAction", asked_at)
    assert typing and typing[0].at < drafts[0].at
    assert all(4.0 - 0.1 <= y.at - x.at < 5.5 for x, y in itertools.pairwise(typing))
    assert not [t for t in typing if final[0].at < t.at < unstreamed_at]


async def test_telegram_group_answer_is_edited_in_place_within_limits(
    tg: Running, telegram: FakeTelegram
) -> None:
    adapter = await tg.start()
    assert tg.core is not None
    await tg.core.settings.set(f"telegram:{GROUP_B['id']}", "streaming", "off", "test")
    for group in (GROUP_A, GROUP_B):
        telegram.push(telegram.message(group, SAM_A, FACT))
    asked_at = time.monotonic()
    asked = ask_in_group(telegram, GROUP_A, SAM_A)
    [posted] = await eventually(lambda: answer_calls(telegram, GROUP_A["id"], "sendMessage", asked_at), 60, "post")
    assert posted.at - asked_at < 3.0, f"first words after {posted.at - asked_at:.1f} s"
    assert posted.params["reply_parameters"]["message_id"] == asked["message"]["message_id"]
    await eventually(lambda: "[1] Sam" in "".join(telegram.visible_texts(GROUP_A["id"])), 60, "footnotes")
    edits = answer_calls(telegram, GROUP_A["id"], "editMessageText", asked_at)
    assert edits[-1].at - posted.at >= 2.0
    calls = [posted, *edits]
    assert all(y.at - x.at >= 0.95 for x, y in itertools.pairwise(calls))  # at most one a second
    assert len(calls) <= 20  # and well inside 20 a minute
    assert adapter.pacer.limits(GROUP_A["id"]).per_minute == 20

    ask_in_group(telegram, GROUP_B, SAM_A)
    await eventually(lambda: "[1] Sam" in "".join(telegram.visible_texts(GROUP_B["id"])), 60, "unstreamed")
    assert answer_calls(telegram, GROUP_B["id"], "editMessageText", 0) == []
    streamed = telegram.visible_texts(GROUP_A["id"])
    unstreamed = telegram.visible_texts(GROUP_B["id"])
    # Same text but for the t.me links, which name each group's own message.
    assert [t.split("t.me/")[0] for t in streamed] == [t.split("t.me/")[0] for t in unstreamed]
    assert len(streamed) == 1 and "[9]" not in streamed[0]
    metrics = tg.core.metrics.render()
    assert 'mnemo_stream_edits_per_reply_count{platform="telegram"} 1' in metrics


async def test_telegram_429_on_edits_still_ends_with_the_complete_answer_once(
    tg: Running, telegram: FakeTelegram
) -> None:
    await tg.start()
    telegram.push(telegram.message(GROUP_A, SAM_A, FACT))
    for _ in range(3):  # the previews and then the final edit meet "Too Many Requests"
        telegram.rate_limit_next("editMessageText", 1)
    asked_at = time.monotonic()
    ask_in_group(telegram, GROUP_A, SAM_A)
    await eventually(lambda: "[1] Sam" in "".join(telegram.visible_texts(GROUP_A["id"])), 60, "final text")
    refused = [c for c in telegram.calls if c.method == "editMessageText" and c.status == 429]
    assert len(refused) == 3
    [shown] = telegram.visible_texts(GROUP_A["id"])
    assert "flower pot" in shown and FILLER.strip() in shown and "Nothing else is noted about keys." in shown
    assert len(answer_calls(telegram, GROUP_A["id"], "sendMessage", asked_at)) == 1
    # After each 429 the chat waited retry_after before its next call.
    for refusal in refused:
        later = [c for c in telegram.calls if c.params.get("chat_id") == GROUP_A["id"] and c.at > refusal.at
                 and c.method != "sendChatAction"]
        assert not later or later[0].at - refusal.at >= 0.95


async def test_model_failing_midway_leaves_only_the_error_reply(
    tg: Running, telegram: FakeTelegram, slow_llm: FakeLLM
) -> None:
    await tg.start()
    telegram.push(telegram.message(GROUP_A, SAM_A, FACT))
    slow_llm.stream_fail_after = 6  # ~3 s of answer, then the provider dies
    asked_at = time.monotonic()
    ask_in_group(telegram, GROUP_A, SAM_A)
    await eventually(lambda: answer_calls(telegram, GROUP_A["id"], "sendMessage", asked_at), 60, "partial answer")
    await eventually(lambda: MODEL_DOWN in telegram.visible_texts(GROUP_A["id"]), 60, "the error reply")
    assert telegram.visible_texts(GROUP_A["id"]) == [MODEL_DOWN]


async def test_hanging_model_gets_the_clear_reply_after_one_deadline(
    make_core: Any, fake_llm: FakeLLM, telegram: FakeTelegram
) -> None:
    fake_llm.hang = True
    running = Running(make_core, fake_llm, telegram)
    running.core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test",
                                   llm_timeout_s=4.0, llm_retries=2)
    try:
        await running.start()
        dm = private_chat(SAM_A)
        asked_at = time.monotonic()
        telegram.push(telegram.message(dm, SAM_A, QUESTION))
        [reply] = await eventually(lambda: answer_calls(telegram, dm["id"], "sendMessage", asked_at), 60, "reply")
        waited = reply.at - asked_at
        assert telegram.visible_texts(dm["id"]) == [MODEL_DOWN]
        assert 4.0 <= waited < 8.0, f"waited {waited:.1f} s for a 4 s deadline with 2 retries"
    finally:
        fake_llm.hang = False
        await running.stop_all()


@pytest.mark.parametrize(("fault", "says"), [("reject_key", "MNEMO_LLM_API_KEY"), ("unknown_model", "MNEMO_MODEL")])
async def test_refused_key_or_unknown_model_is_said_as_such(
    tg: Running, telegram: FakeTelegram, slow_llm: FakeLLM, fault: str, says: str
) -> None:
    setattr(slow_llm, fault, True)
    await tg.start()
    dm = private_chat(SAM_A)
    asked_at = time.monotonic()
    telegram.push(telegram.message(dm, SAM_A, QUESTION))
    await eventually(lambda: answer_calls(telegram, dm["id"], "sendMessage", asked_at), 120, "reply")
    [shown] = telegram.visible_texts(dm["id"])
    assert says in shown and "couldn't reach" not in shown and "your message is saved" in shown.lower()
    # Asking again won't help, so litellm's retries are not spent on it either.
    assert len([r for r in slow_llm.chat_requests() if not learning_request(r)]) == 1


async def test_crash_while_waiting_for_the_pacing_turn_is_answered_not_apologised_for(
    make_core: Any, slow_llm: FakeLLM, telegram: FakeTelegram
) -> None:
    """Worker A has the answer but waits for the chat's turn (a 429 hold) when it "dies"; B
    adopts the message: it was never marked SENDING, so B answers it (no "I was
    interrupted"), and A, fenced out, sends nothing when its turn comes."""
    from adapters.telegram import TelegramAdapter
    from core.store import PROCESSING
    from tests.fakes.telegram import TOKEN

    slow_llm.stream_chunk_delay_s = 0.0
    worker_a = Running(make_core, slow_llm, telegram)
    adapter_a = await worker_a.start()
    assert worker_a.core is not None
    dm = private_chat(SAM_A)
    await worker_a.core.settings.set(f"telegram:{dm['id']}", "streaming", "off", "test")
    adapter_a.pacer.hold(dm["id"], 8.0)
    asked = telegram.push(telegram.message(dm, SAM_A, QUESTION))
    key = f"telegram:{dm['id']}:{asked['message']['message_id']}"
    await eventually(lambda: slow_llm.chat_requests(), 120, "the model asked")
    await asyncio.sleep(1.0)  # the answer is ready and waits for the chat's turn
    stored = await worker_a.core.store.get_message(key)
    assert stored is not None and stored["state"] == PROCESSING
    # A "dies": its lease runs out while it waits; B adopts the message.
    await worker_a.core.store.messages.update_one({"key": key}, {"$set": {"lease_until": utcnow() - timedelta(seconds=1)}})
    core_b = await make_core(model="openai/fake-model", llm_api_base=slow_llm.api_base, llm_api_key="sk-test")
    adapter_b = TelegramAdapter(core_b, token=TOKEN, api_base=telegram.api_base)
    core_b.register(adapter_b)
    try:
        assert await core_b.recover_stale() == 1
        await eventually(lambda: telegram.sent_messages(dm["id"]), 60, "B's answer")
        await asyncio.sleep(8.0)  # A's turn comes, and goes
        [answer] = telegram.sent_messages(dm["id"])
        assert INTERRUPTED not in answer.params["text"] and "flower pot" not in INTERRUPTED
        done = await core_b.store.get_message(key)
        assert done is not None and done["state"] == "done" and not done.get("interrupted_send")
    finally:
        await worker_a.stop_all()
        await adapter_b.bot.session.close()
