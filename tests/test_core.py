"""The pipeline on the real stores (SecantusDB over the wire, Chroma on disk), with a platform
that records what it was asked to send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from core.engine import Core
from core.memory.index import collection_name
from core.models import Message, PlatformLimits, Reply, Scope, utcnow
from core.render import render_chunks
from tests.fakes.llm import FakeLLM


class RecordingPlatform:
    name = "test"
    limits = PlatformLimits(max_message_chars=4096)

    def __init__(self, admins: set[str] | None = None) -> None:
        self.sent: list[tuple[Message, Reply]] = []
        self.admins = admins or set()

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        self.sent.append((message, reply))
        return [f"out{len(self.sent)}"]

    async def is_admin(self, message: Message) -> bool:
        return message.author_id in self.admins

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        yield


def msg(text: str, *, mid: str, user: str = "u1", conv: str = "dm-u1", dm: bool = True, **kw: Any) -> Message:
    return Message(platform="test", conversation_id=conv, message_id=mid, author_id=user, author_name=user.title(),
                   text=text, is_dm=dm, **kw)


async def core_with(make_core: Any, fake_llm: FakeLLM | None = None) -> tuple[Core, RecordingPlatform]:
    config: dict[str, Any] = {}
    if fake_llm is not None:
        config = {"model": "openai/fake-model", "llm_api_base": fake_llm.api_base, "llm_api_key": "sk-test"}
    core = await make_core(**config)
    platform = RecordingPlatform(admins={"admin"})
    core.register(platform)
    return core, platform


async def test_a_redelivered_event_is_answered_once(make_core: Any, fake_llm: FakeLLM) -> None:
    core, platform = await core_with(make_core, fake_llm)
    first = msg("hello there, I like kites", mid="42")
    again = msg("hello there, I like kites", mid="42")
    concurrent = msg("hello there, I like kites", mid="42")
    await asyncio.gather(core.handle(first), core.handle(again), core.handle(concurrent))
    await core.handle(msg("hello there, I like kites", mid="42"))
    assert len(platform.sent) == 1
    assert await core.store.messages.count_documents({"key": "test:dm-u1:42"}) == 1
    assert len(fake_llm.answer_requests()) == 1


async def test_messages_of_one_conversation_are_answered_in_order(make_core: Any, fake_llm: FakeLLM) -> None:
    core, platform = await core_with(make_core, fake_llm)
    fake_llm.delay_s = 0.05
    futures = [await core.submit(msg(f"note number {i}", mid=str(i))) for i in range(6)]
    await asyncio.gather(*[f for f in futures if f is not None])
    assert [m.message_id for m, _ in platform.sent] == [str(i) for i in range(6)]


async def test_forget_all_leaves_nothing_in_mongodb_or_chroma(make_core: Any, fake_llm: FakeLLM) -> None:
    core, platform = await core_with(make_core, fake_llm)
    await core.handle(msg("my passport number is X1234567", mid="1"))
    await core.handle(msg("hi all, alice here, ping me about X1234567 later", mid="2", conv="g1", dm=False))
    await core.handle(msg("unrelated note from bob", mid="3", user="bob", conv="g1", dm=False))
    assert await core.index.count(Scope("dm", "test", "u1")) == 1
    await core.handle(msg("/forget all", mid="4"))
    assert "forgot everything from you (2 messages)" in platform.sent[-1][1].text
    assert platform.sent[-1][1].private
    assert await core.store.messages.count_documents({"author_key": "test:u1", "is_command": False}) == 0
    assert await core.store.replies.count_documents({"text": {"$regex": "X1234567"}}) == 0
    assert await core.index.count(Scope("dm", "test", "u1")) == 0
    group = core.index.chroma.get_collection(collection_name(Scope("group", "test", "g1")))
    docs = group.get(include=["documents"])["documents"]
    assert docs and not any("X1234567" in d for d in docs)
    start = len(fake_llm.chat_requests())
    await core.handle(msg("what is my passport number?", mid="5"))
    assert "X1234567" not in str(fake_llm.chat_requests()[start:])


async def test_export_round_trips_my_messages(make_core: Any) -> None:
    core, platform = await core_with(make_core)
    await core.handle(msg("I prefer window seats", mid="1"))
    await core.handle(msg("someone else's note", mid="2", user="bob", conv="dm-bob"))
    await core.handle(msg("/export", mid="3"))
    reply = platform.sent[-1][1]
    assert reply.private and reply.file is not None
    data = json.loads(reply.file.data)
    texts = [m["text"] for m in data["messages"]]
    assert "I prefer window seats" in texts and "someone else's note" not in texts
    assert data["user"]["id"] == "u1"


async def test_retention_deletes_old_memories_from_both_stores(make_core: Any) -> None:
    core, platform = await core_with(make_core)
    old = msg("the old office was on Elm Road", mid="1", conv="g1", dm=False, ts=utcnow() - timedelta(days=40))
    new = msg("the new office is on Birch Lane", mid="2", conv="g1", dm=False)
    await core.handle(old)
    await core.handle(new)
    await core.handle(msg("/settings retention_days 30", mid="3", user="admin", conv="g1", dm=False))
    assert "retention_days: forever -> 30" in platform.sent[-1][1].text
    assert await core.enforce_retention() == 1
    scope = Scope("group", "test", "g1")
    assert await core.index.count(scope) == 1
    hits = await core.index.search(scope, "office road lane", 5)
    assert any("Birch Lane" in h.document for h in hits)
    assert not any("Elm Road" in h.document for h in hits)
    assert await core.store.messages.count_documents({"text": {"$regex": "Elm Road"}}) == 0


async def test_opt_out_stops_remembering_me_everywhere(make_core: Any) -> None:
    core, _platform = await core_with(make_core)
    await core.handle(msg("/optout", mid="1"))
    await core.handle(msg("my cat is called Pixel", mid="2", conv="g1", dm=False))
    assert await core.index.count(Scope("group", "test", "g1")) == 0
    await core.handle(msg("/optin", mid="3"))
    await core.handle(msg("my dog is called Byte", mid="4", conv="g1", dm=False))
    assert await core.index.count(Scope("group", "test", "g1")) == 1


async def test_a_group_that_changes_id_keeps_memory_and_settings(make_core: Any) -> None:
    core, platform = await core_with(make_core)
    await core.handle(msg("standup is at 9:30", mid="1", conv="-100", dm=False))
    await core.handle(msg("/settings respond_to all", mid="2", user="admin", conv="-100", dm=False))
    await core.migrate_conversation("test", "-100", "-100999")
    settings = await core.settings.get("test:-100999")
    assert settings.respond_to == "all"
    await core.handle(msg("when is standup?", mid="3", conv="-100999", dm=False))
    reply = platform.sent[-1][1]
    assert any("9:30" in f.quote for f in reply.footnotes)


def test_long_replies_split_at_the_limit_with_footnotes_whole() -> None:
    from core.models import Footnote

    body = "\n\n".join(f"Paragraph {i}. " + "This sentence is long enough. " * 20 for i in range(12))
    notes = [Footnote(i, "Alice", utcnow(), "quote " * 30, f"https://example.com/{i}") for i in range(1, 6)]
    chunks = render_chunks(Reply(body, notes), 1000)
    assert all(len(c) <= 1000 for c in chunks)
    joined = "\n".join(chunks)
    for i in range(1, 6):
        lines = [line for line in joined.splitlines() if line.startswith(f"[{i}] Alice")]
        assert len(lines) == 1 and lines[0].endswith(f"https://example.com/{i}")
    # no paragraph was cut mid-sentence
    for chunk in chunks:
        body_lines = [line for line in chunk.splitlines() if line and not line.startswith("[")]
        assert not body_lines or body_lines[-1].endswith("."), chunk


async def test_a_dead_workers_message_is_adopted_at_once_and_never_blocks_the_next(make_core: Any) -> None:
    from core.store import message_doc

    core, platform = await core_with(make_core)  # lease 120 s: only the heartbeats can tell
    # A worker on another host stored a message, then died: its lease runs for minutes more,
    # but its heartbeat stopped 25 s ago.
    dead, alive = "far-host:4242:dead00", "far-host:4243:live00"
    for worker in (dead, alive):
        await core.store.beat(worker, ["test"])
    await core.store.workers.update_one({"_id": dead}, {"$set": {"beat_at": utcnow() - timedelta(seconds=25)}})
    for worker, mid in ((dead, "1"), (alive, "2")):
        earlier = msg(f"the spare key {mid} is under the blue flowerpot", mid=mid, conv=f"dm-u{mid}", user=f"u{mid}")
        doc = message_doc(earlier, remember=True)
        doc.update(owner=worker, lease_until=utcnow() + timedelta(seconds=100), order_ts=earlier.ts.timestamp(),
                   state="processing")
        await core.store.insert_message(doc)
    started = asyncio.get_running_loop().time()
    await core.handle(msg("where is the spare key?", mid="3", conv="dm-u1", user="u1"))
    assert asyncio.get_running_loop().time() - started < 30
    answered = [m.message_id for m, _ in platform.sent]
    assert answered == ["1", "3"]  # the dead worker's message first, in the conversation's order
    # the live worker's message is left to it
    assert (await core.store.get_message("test:dm-u2:2"))["owner"] == alive
    assert await core.recover_stale() == 0


async def test_many_long_memories_still_fit_the_models_context(make_core: Any, fake_llm: FakeLLM) -> None:
    """Issue 14 defect 8: sources in a prompt are bounded (count and characters), so a channel
    with many long memories and a large `recall_k` is still answered, not "couldn't reach"."""
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test",
                           recall_k=60)
    platform = RecordingPlatform()
    core.register(platform)
    start = utcnow() - timedelta(days=2)
    filler = " ".join(f"Then verify the service number {n} responds on its health endpoint." for n in range(22))
    long_ones = [msg(f"Deploy checklist step {i}: drain the node pool {i}. {filler}", mid=f"s{i}", user="ops",
                     conv="g1", dm=False, ts=start + timedelta(minutes=i)) for i in range(60)]
    chatter = [msg(f"lunch plan {i}: tacos", mid=f"c{i}", user="bo", conv="g1", dm=False,
                   ts=start + timedelta(hours=5, minutes=i)) for i in range(8)]
    await core.ingest_history([(m, []) for m in long_ones + chatter])
    fake_llm.max_prompt_chars = 24_000  # a finite context window: 60 quoted steps would not fit
    await core.handle(msg("@mnemo what is on the deploy checklist?", mid="q1", user="bo", conv="g1", dm=False,
                          mentions_bot=True))
    [(_, reply)] = platform.sent
    assert not reply.is_error, reply.text
    assert "Deploy checklist step" in reply.text and reply.footnotes


class FlakyPlatform(RecordingPlatform):
    """Fails the first sends with `errors` (then sends), like a platform's network edge."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__()
        self.errors = errors
        self.attempts = 0

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return await super().send_reply(message, reply)


async def test_a_reply_is_retried_only_after_transient_send_errors(make_core: Any) -> None:
    """Issue 14 defect 8: a network error is retried (and the reply arrives); a definite error
    (a bug, a refusal) is not sent again and again, and the message is marked failed at once."""
    core = await make_core()
    flaky = FlakyPlatform([ConnectionResetError("reset by peer")])
    core.register(flaky)
    await core.handle(msg("my bike is the red one", mid="t1"))
    assert flaky.attempts == 2 and len(flaky.sent) == 1

    broken = FlakyPlatform([TypeError("send_reply() got an unexpected keyword argument")] * 4)
    core.register(broken)
    await core.handle(msg("my car is the blue one", mid="t2"))
    assert broken.attempts == 1 and broken.sent == []
    assert (await core.store.get_message("test:dm-u1:t2"))["state"] == "failed"


async def test_a_question_after_days_of_silence_is_not_read_as_part_of_the_old_exchange(
    make_core: Any, fake_llm: FakeLLM
) -> None:
    """The conversation the model is shown is the recent exchange (the last 3 days): yesterday's
    turns are there, last week's are not (they can still be recalled as sources)."""
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test")
    core.register(RecordingPlatform())
    now = utcnow()
    await core.ingest_history([
        (msg("We are repainting the kitchen green this weekend.", mid="old", ts=now - timedelta(days=5)), []),
        (msg("The offsite moved to Porto.", mid="new", ts=now - timedelta(days=1)), []),
    ])
    await core.handle(msg("and why is that?", mid="q1", ts=now))
    prompt = str(fake_llm.answer_requests()[-1]["messages"][-1]["content"])
    recent = prompt.split("Recent conversation (oldest first):\n")[1].split("\n\n")[0]
    assert "offsite moved to Porto" in recent, prompt
    assert "kitchen" not in recent, prompt
