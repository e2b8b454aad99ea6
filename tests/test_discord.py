"""The Discord adapter against a loopback Discord (REST + websocket gateway), with the real
discord.py client pointed at it through its REST base. Assertions are on what reaches
Discord: content, threading, mentions policy, footnote jump URLs, chunk sizes, ephemeral
flags, exactly-once replies after re-dispatches."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fakes.discord import (
    ALICE,
    BOB,
    BOT_ID,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    PRIVATE_THREAD_ID,
    THREAD_ID,
    FakeDiscord,
    dm_channel_id,
)
from tests.fakes.llm import FakeLLM

NO_PINGS = {"parse": [], "replied_user": True}


def jump_url(channel_id: int | str, message_id: str, guild: int | str = GUILD_ID) -> str:
    return f"https://discord.com/channels/{guild}/{channel_id}/{message_id}"


class Bot:
    """An in-process Core + DiscordAdapter connected to the fake."""

    def __init__(self, fake: FakeDiscord, core: Any, adapter: Any, task: asyncio.Task[None]) -> None:
        self.fake, self.core, self.adapter, self.task = fake, core, adapter, task

    def duplicates(self) -> float:
        return sum(self.core.metrics.counters["mnemo_duplicates_total"].values())

    async def idle(self) -> None:
        """Wait until every submitted message has been processed."""
        await asyncio.sleep(0.2)
        await self.fake.until(lambda: self.core.runner.pending == 0, what="the core to finish")

    async def say(self, data: dict[str, Any]) -> dict[str, Any]:
        self.fake.dispatch("MESSAGE_CREATE", data)
        return data

    async def replies(self, data: dict[str, Any], count: int = 1) -> list[dict[str, Any]]:
        """The channel messages answering `data` (its first chunk references it)."""
        await self.fake.until(lambda: len(self.fake.replies_to(data["id"])) >= count, what=f"a reply to {data['content']!r}")
        return self.fake.replies_to(data["id"])


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
async def bot(fake: FakeDiscord, fake_llm: FakeLLM, make_core: Any) -> AsyncIterator[Bot]:
    from adapters.discord import DiscordAdapter

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


async def test_guild_mention_is_answered_in_thread_of_reply_with_cited_jump_url(bot: Bot) -> None:
    fake = bot.fake
    fact = await bot.say(fake.message("The office wifi password is tulip-42, changed monthly."))
    await bot.idle()
    assert fake.sent == []  # not addressed: remembered, not answered

    question = await bot.say(fake.message("what is the office wifi password?", mention_bot=True))
    [reply] = await bot.replies(question)
    assert reply["channel_id"] == str(CHANNEL_ID)
    assert str(reply["message_reference"]["message_id"]) == question["id"]
    assert reply["message_reference"]["fail_if_not_exists"] is False
    assert reply["allowed_mentions"] == NO_PINGS
    assert "tulip-42" in reply["content"]
    assert re.search(r"^\[1\] Alice, .*tulip-42.*" + re.escape(f"(<{jump_url(CHANNEL_ID, fact['id'])}>)"),
                     reply["content"], re.MULTILINE), reply["content"]
    assert str(BOT_ID) not in "".join(m["content"] for m in fake.sent)
    assert CHANNEL_ID in fake.typing  # "Mnemo is typing…" while the model worked


async def test_redispatch_and_resume_replay_answer_once(bot: Bot) -> None:
    fake = bot.fake
    question = await bot.say(fake.message("hello, are you there?", mention_bot=True))
    await bot.replies(question)
    await bot.idle()

    fake.dispatch("MESSAGE_CREATE", question)  # Discord sends the same event again
    await fake.until(lambda: bot.duplicates() >= 1, what="the re-dispatch to be seen")

    fake.replay_on_resume = [{"t": "MESSAGE_CREATE", "d": question}]
    fake.reconnect()  # op 7 -> discord.py RESUMEs -> the fake replays the event
    await fake.until(lambda: len(fake.resumes) == 1, what="a RESUME")
    assert fake.resumes[0]["session_id"] == "fake-session" and fake.resumes[0]["token"] == fake.token
    await fake.until(lambda: bot.duplicates() >= 2, what="the replayed event to be seen")
    await bot.idle()
    assert len(fake.replies_to(question["id"])) == 1
    assert len(fake.sent) == 1
    # still alive after the resume: a new message is answered
    later = await bot.say(fake.message("and now?", mention_bot=True))
    await bot.replies(later)


async def test_thread_reply_goes_into_the_thread_and_shares_the_channel_memory(bot: Bot) -> None:
    fake = bot.fake
    fact = await bot.say(fake.message("Our team offsite is in Lisbon on June 12."))
    await bot.idle()
    question = await bot.say(fake.message("where is the team offsite?", channel_id=THREAD_ID, mention_bot=True))
    [reply] = await bot.replies(question)
    assert reply["channel_id"] == str(THREAD_ID)
    assert str(reply["message_reference"]["message_id"]) == question["id"]
    assert "Lisbon" in reply["content"]
    assert jump_url(CHANNEL_ID, fact["id"]) in reply["content"]


async def test_a_private_thread_is_its_own_scope_never_read_in_its_parent_channel(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    fake = bot.fake
    secret = await bot.say(fake.message("HR only: the reorg moves Dana to the Porto office.", channel_id=PRIVATE_THREAD_ID))
    await bot.idle()
    asked_in_general = len(fake_llm.chat_requests())
    general = await bot.say(fake.message("where is Dana moving with the reorg?", mention_bot=True))
    [reply] = await bot.replies(general)
    assert "Porto" not in reply["content"] and str(PRIVATE_THREAD_ID) not in reply["content"]
    assert "Porto" not in json.dumps([r["messages"] for r in fake_llm.chat_requests()[asked_in_general:]])
    # a public thread shares the channel's scope, so it cannot read the private thread either
    public = await bot.say(fake.message("where is Dana moving?", channel_id=THREAD_ID, mention_bot=True))
    [reply] = await bot.replies(public)
    assert "Porto" not in reply["content"]
    # inside the private thread it is remembered and cited, linked to the thread
    inside = await bot.say(fake.message("where is Dana moving with the reorg?", channel_id=PRIVATE_THREAD_ID,
                                        mention_bot=True))
    [reply] = await bot.replies(inside)
    assert reply["channel_id"] == str(PRIVATE_THREAD_ID)
    assert "Porto" in reply["content"]
    assert jump_url(PRIVATE_THREAD_ID, secret["id"]) in reply["content"]


async def test_reply_to_the_bot_is_answered_and_dm_always(bot: Bot) -> None:
    fake = bot.fake
    first = await bot.say(fake.message("ping", mention_bot=True))
    [bot_message] = await bot.replies(first)
    referenced = {**fake.message(bot_message["content"], author=BOT_ID), "id": bot_message["id"]}
    follow_up = await bot.say(fake.message("thanks, one more thing", reply_to=referenced))
    [answer] = await bot.replies(follow_up)
    assert answer["channel_id"] == str(CHANNEL_ID)

    dm = await bot.say(fake.message("hi there", dm=True))
    [dm_reply] = await bot.replies(dm)
    assert dm_reply["channel_id"] == str(dm_channel_id(ALICE))


async def test_long_answer_is_split_under_2000_with_footnotes_whole_and_429_honoured(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    fake = bot.fake
    fact = await bot.say(fake.message("The release checklist lives in the ops wiki.", dm=True))
    await bot.replies(fact)
    sentences = [f"Step {i}: check item number {i} of the release checklist carefully." for i in range(90)]
    fake_llm.script = [" ".join(sentences) + " [1]"]
    fake.rate_limit_next = 1  # the first chunk is refused with 429 retry_after 0.5
    question = await bot.say(fake.message("what is on the release checklist?", dm=True))
    await fake.until(lambda: any("[1] Alice" in m["content"] for m in fake.sent), what="the footnote chunk")
    await bot.idle()
    chunks = [m for m in fake.sent_to(dm_channel_id(ALICE)) if m["id"] != fake.replies_to(fact["id"])[0]["id"]]
    assert len(chunks) >= 3
    assert all(len(m["content"]) <= 2000 for m in chunks)
    assert str(chunks[0]["message_reference"]["message_id"]) == question["id"]
    body = " ".join(m["content"] for m in chunks)
    assert all(s in body for s in sentences)  # nothing dropped: split on sentence boundaries
    assert len(re.findall(r"Step 17:", body)) == 1  # nothing doubled by the 429 retry
    assert fake.message_posts == len(fake.sent) + 1  # exactly one refused attempt, retried
    footnote = next(m for m in chunks if "[1] Alice" in m["content"])["content"]
    assert jump_url(dm_channel_id(ALICE), fact["id"], guild="@me") in footnote


async def test_failed_sends_resume_without_doubling_or_dropping_a_chunk(bot: Bot, fake_llm: FakeLLM) -> None:
    fake = bot.fake
    sentences = [f"Item {i}: bring the blue folder number {i} to the archive room." for i in range(70)]
    fake_llm.script = [" ".join(sentences)]
    # chunk 1 is created but its response is lost (discord.py resends the same nonce);
    # chunk 2 first meets a 503 (the send fails; the core retries the reply)
    fake.faults = {1: "lost", 3: "unavailable"}
    question = await bot.say(fake.message("what should I bring?", dm=True))
    await fake.until(lambda: len(fake.faults) == 0 and bot.core.runner.pending == 0, what="the faults to be hit")
    await bot.idle()
    chunks = fake.sent_to(dm_channel_id(ALICE))
    body = " ".join(m["content"] for m in chunks)
    assert len(chunks) >= 2 and all(len(m["content"]) <= 2000 for m in chunks)
    assert all(body.count(s) == 1 for s in sentences), "a chunk was dropped or doubled"
    assert str(chunks[0]["message_reference"]["message_id"]) == question["id"]
    assert fake.message_posts == len(chunks) + 2


async def test_settings_command_refused_for_member_applied_for_manage_channels(bot: Bot) -> None:
    fake = bot.fake
    names = {c["name"]: c for c in fake.commands or []}
    assert {"ask", "memory", "profile", "forget", "export", "settings"} <= set(names)
    assert [(o["name"], o["type"]) for o in names["settings"]["options"]] == [("key", 3), ("value", 3)]

    refused = fake.interaction("settings", {"key": "respond_to", "value": "all"}, author=ALICE)
    fake.dispatch("INTERACTION_CREATE", refused)
    await fake.until(lambda: len(fake.followups) == 1, what="the refusal")
    [callback] = fake.callbacks
    assert callback["interaction_id"] == refused["id"] and callback["type"] == 5
    assert callback["data"]["flags"] == EPHEMERAL
    assert fake.followups[0]["token"] == refused["token"]
    assert fake.followups[0]["flags"] & EPHEMERAL
    assert "Only this channel's admins" in fake.followups[0]["content"]
    plain = await bot.say(fake.message("lunch at noon?"))
    await bot.idle()
    assert fake.replies_to(plain["id"]) == []  # still "mentions": a plain message is not answered

    applied = fake.interaction("settings", {"key": "respond_to", "value": "all"}, author=BOB)
    fake.dispatch("INTERACTION_CREATE", applied)
    await fake.until(lambda: len(fake.followups) == 2, what="the admin's change")
    assert "respond_to: mentions -> all" in fake.followups[1]["content"]
    fake.dispatch("INTERACTION_CREATE", applied)  # re-dispatched: acknowledged once only
    await fake.until(lambda: bot.duplicates() >= 1, what="the duplicate interaction")
    now_answered = await bot.say(fake.message("lunch at noon?"))
    await bot.replies(now_answered)
    assert len(fake.callbacks) == 2 and len(fake.followups) == 2


async def test_memory_and_export_are_ephemeral_and_export_is_a_file(bot: Bot) -> None:
    fake = bot.fake
    said = await bot.say(fake.message("My favourite tea is genmaicha."))
    await bot.idle()
    fake.dispatch("INTERACTION_CREATE", fake.interaction("memory", {"page": 1}))
    await fake.until(lambda: len(fake.followups) == 1, what="/memory")
    memory = fake.followups[0]
    assert memory["flags"] & EPHEMERAL and fake.callbacks[0]["data"]["flags"] == EPHEMERAL
    assert "genmaicha" in memory["content"] and jump_url(CHANNEL_ID, said["id"]) in memory["content"]

    fake.dispatch("INTERACTION_CREATE", fake.interaction("export"))
    await fake.until(lambda: len(fake.followups) == 2, what="/export")
    export = fake.followups[1]
    assert export["flags"] & EPHEMERAL
    [attached] = export["files"]
    assert re.fullmatch(rf"mnemo-export-discord-{ALICE}-\d{{8}}T\d{{6}}Z\.json", attached["name"]), attached["name"]
    data = json.loads(attached["data"])
    assert any(m["text"] == "My favourite tea is genmaicha." for m in data["messages"])
    assert fake.sent == []  # nothing private went to the channel

    fake.dispatch("INTERACTION_CREATE", fake.interaction("ask", {"question": "what is my favourite tea?"}))
    await fake.until(lambda: len(fake.followups) == 3, what="/ask")
    assert not (fake.callbacks[2].get("data") or {}).get("flags")  # /ask answers in public
    ask = fake.followups[2]
    assert not ask.get("flags") and "genmaicha" in ask["content"] and ask["allowed_mentions"] == NO_PINGS


async def test_private_command_typed_in_a_channel_is_answered_by_dm(bot: Bot) -> None:
    fake = bot.fake
    await bot.say(fake.message("I keep my bike in the north shed."))
    await bot.idle()
    typed = await bot.say(fake.message("/memory"))
    await fake.until(lambda: bool(fake.sent_to(dm_channel_id(ALICE))), what="the DM")
    await bot.idle()
    assert fake.sent_to(CHANNEL_ID) == []
    assert "north shed" in fake.sent_to(dm_channel_id(ALICE))[0]["content"]
    assert typed["id"]  # the typed command itself is never remembered nor echoed in the channel


async def test_attachments_oversize_refused_before_download_voice_fetched_lazily(bot: Bot) -> None:
    fake = bot.fake
    big = fake.attachment("huge.png", "image/png", None, size=30 * 1024 * 1024)
    oversize = await bot.say(fake.message("", dm=True, attachments=[big]))
    [reply] = await bot.replies(oversize)
    assert "huge.png" in reply["content"] and "MB" in reply["content"]
    assert fake.cdn_hits == []  # refused on the declared size, never downloaded

    voice = fake.attachment("voice-message.ogg", "audio/ogg", b"OggS" + b"\0" * 2000, voice=True)
    note = await bot.say(fake.message("", dm=True, attachments=[voice], flags=1 << 13))
    [answer] = await bot.replies(note)
    assert fake.cdn_hits == [voice["url"].split(str(fake_port(fake)), 1)[1]]
    # a transcript-based answer or a clear reply naming the file; never a crash apology
    assert answer["content"] and "Something went wrong" not in answer["content"], answer["content"]


async def test_an_edited_message_replaces_what_is_remembered(bot: Bot) -> None:
    fake = bot.fake
    original = await bot.say(fake.message("The standup moved to 9:30 on Tuesdays.", dm=True))
    await bot.replies(original)
    await bot.idle()
    edited = {**original, "content": "The standup moved to 10:15 on Tuesdays.", "edited_timestamp": original["timestamp"]}
    fake.dispatch("MESSAGE_UPDATE", edited)
    await asyncio.sleep(0.5)
    await bot.idle()
    question = await bot.say(fake.message("when is the standup?", dm=True))
    [reply] = await bot.replies(question)
    assert "10:15" in reply["content"] and "9:30" not in reply["content"]


async def test_a_rejected_token_stops_with_what_to_do(fake: FakeDiscord, make_core: Any) -> None:
    from adapters.discord import DiscordAdapter
    from core.errors import FatalPlatformError

    core = await make_core()
    adapter = DiscordAdapter(core, token="not-the-token", api_base=fake.api_base)
    with pytest.raises(FatalPlatformError, match="DISCORD_BOT_TOKEN"):
        await asyncio.wait_for(adapter.run(), 30)
    assert fake.identifies == []


def fake_port(fake: FakeDiscord) -> int:
    return int(fake.api_base.split(":")[2].split("/")[0])


# -- `mnemo run` as a black box (env vars only) ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mnemo_run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run"], env=env, cwd=str(REPO), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _duplicates(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r'^mnemo_duplicates_total\{platform="discord"\} (\S+)$', text, re.MULTILINE))


def test_mnemo_run_answers_guild_and_dm_once_each(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    fake = FakeDiscord().start()
    port = _free_port()
    env = {**base_env, **fake_llm.env(), **fake.env(), "MNEMO_HTTP_PORT": str(port)}
    proc = _mnemo_run(env)
    try:
        fake.wait(lambda: fake.ready or proc.poll() is not None, timeout=120, what="mnemo run to connect")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert ("GET", "/api/v10/gateway/bot") in fake.requests  # the websocket URL came from there
        assert fake.identifies[0]["intents"] & (1 << 15)  # Message Content
        fact = fake.message("The staging database lives on host db-7.", dm=True)
        fake.dispatch("MESSAGE_CREATE", fact)
        fake.wait(lambda: bool(fake.replies_to(fact["id"])), what="the first DM reply")
        question = fake.message("which host is the staging database on?", dm=True)
        fake.dispatch("MESSAGE_CREATE", question)
        fake.wait(lambda: bool(fake.replies_to(question["id"])), what="the answer")
        fake.dispatch("MESSAGE_CREATE", question)  # re-dispatch
        guild = fake.message("anyone seen the release notes?", mention_bot=True)
        fake.dispatch("MESSAGE_CREATE", guild)
        fake.wait(lambda: bool(fake.replies_to(guild["id"])), what="the guild reply")
        fake.wait(lambda: _duplicates(port) >= 1, what="the duplicate to be counted")
        time.sleep(0.5)
        [answer] = fake.replies_to(question["id"])
        assert "db-7" in answer["content"]
        assert jump_url(dm_channel_id(ALICE), fact["id"], guild="@me") in answer["content"]
        assert answer["allowed_mentions"] == NO_PINGS
        assert fake.replies_to(guild["id"])[0]["channel_id"] == str(CHANNEL_ID)
        assert len(fake.sent) == 3
    finally:
        proc.terminate()
        try:
            code = proc.wait(60)
        finally:
            fake.stop()
    assert code == 0


def test_mnemo_run_exits_nonzero_with_portal_instructions_on_4014(base_env: dict[str, str]) -> None:
    fake = FakeDiscord(refuse_message_content=True).start()
    env = {**base_env, **fake.env(), "MNEMO_HTTP_PORT": str(_free_port())}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot.cli", "run"], env=env, cwd=str(REPO), text=True, capture_output=True,
            timeout=180, check=False,
        )
    finally:
        fake.stop()
    assert proc.returncode != 0
    assert "Privileged Gateway Intents" in proc.stderr and "Message Content Intent" in proc.stderr, proc.stderr
    assert fake.identifies  # it really tried the gateway URL from /gateway/bot
