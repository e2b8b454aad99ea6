"""The Telegram adapter against a loopback Bot API server: the real aiogram `Bot` pointed at
the fake with TelegramAPIServer, real stores and core, the fake model for cited answers.
Assertions are on what reaches Telegram: text, footnotes and links, reply_parameters,
message_thread_id, split sizes, pacing, exactly-once delivery."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiogram.types import Update

from adapters.telegram import TelegramAdapter
from core.engine import Core
from core.models import Scope
from tests.conftest import REPO
from tests.fakes.llm import FakeLLM
from tests.fakes.telegram import (
    BOT_USER,
    BOT_USERNAME,
    TOKEN,
    FakeTelegram,
    basic_group,
    mention_entity,
    parse_html,
    private_chat,
    supergroup,
    user,
)

ALICE = user(111, "Alice", "alice")
BOB = user(222, "Bob", "bob")
GROUP = supergroup(-1001234567890, "Book club")
FORUM = supergroup(-1009876543210, "Project forum", forum=True)
MENTION = f"@{BOT_USERNAME}"
SECRET = "s3cret-Token_for-webhooks"


async def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def settle(seconds: float = 1.0) -> None:
    """Give the bot time to (wrongly) send more, before asserting it did not."""
    await asyncio.sleep(seconds)


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


class Running:
    """An in-process Core + TelegramAdapter (polling or webhook) against the fake."""

    def __init__(self, make_core: Any, fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
        self.make_core = make_core
        self.fake_llm = fake_llm
        self.telegram = telegram
        self.core: Core | None = None
        self.adapters: list[tuple[TelegramAdapter, asyncio.Task[None]]] = []

    async def start(self, **kwargs: Any) -> TelegramAdapter:
        if self.core is None:
            self.core = await self.make_core(
                model="openai/fake-model", llm_api_base=self.fake_llm.api_base, llm_api_key="sk-test"
            )
        adapter = TelegramAdapter(self.core, token=TOKEN, api_base=self.telegram.api_base, poll_timeout_s=1, **kwargs)
        self.core.register(adapter)
        task = asyncio.create_task(adapter.run())
        self.adapters.append((adapter, task))
        await eventually(lambda: adapter.me is not None or task.done(), 10, "getMe")
        if task.done():
            task.result()
        return adapter

    async def stop_all(self) -> None:
        for adapter, task in self.adapters:
            await adapter.stop()
            await asyncio.wait_for(task, 10)
        self.adapters.clear()


@pytest.fixture
async def bot(make_core: Any, fake_llm: FakeLLM, telegram: FakeTelegram) -> AsyncIterator[Running]:
    running = Running(make_core, fake_llm, telegram)
    yield running
    await running.stop_all()


def replies_to(telegram: FakeTelegram, update: dict[str, Any]) -> list[Any]:
    msg = update.get("message") or update["edited_message"]
    return [
        c for c in telegram.sent_messages(msg["chat"]["id"])
        if (c.params.get("reply_parameters") or {}).get("message_id") == msg["message_id"]
    ]


def visible(call: Any) -> str:
    return parse_html(call.params["text"])


# -- private chats, groups, topics -------------------------------------------------------


async def test_dm_answer_cites_earlier_message_threaded_in_html(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    dm = private_chat(ALICE)
    fact = telegram.push(telegram.message(dm, ALICE, "My sister's wedding is in Porto on June 14 <3 & cake"))
    # Generous: the first message of a session may wait for the local embedding model to load.
    await eventually(lambda: replies_to(telegram, fact), 180, "reply to the fact")
    question = telegram.push(telegram.message(dm, ALICE, "Where is my sister's wedding?"))
    [answer] = await eventually(lambda: replies_to(telegram, question), what="answer")

    params = answer.params
    assert params["parse_mode"] == "HTML"
    assert params["reply_parameters"] == {"message_id": question["message"]["message_id"],
                                          "allow_sending_without_reply": True}
    assert "message_thread_id" not in params
    text = visible(answer)
    assert "Porto" in text and "[1]" in text
    footnote = [line for line in text.splitlines() if line.startswith("[1] ")]
    assert footnote and "Alice" in footnote[0] and "Porto" in footnote[0]
    # Escaped on the wire, intact for the reader; a private chat has no t.me link.
    assert "&lt;3 &amp; cake" in params["text"] and "<3 & cake" in text
    assert "t.me/" not in text


async def test_group_answers_mentions_with_tme_links_and_ignores_the_rest(
    bot: Running, telegram: FakeTelegram
) -> None:
    await bot.start()
    said = telegram.push(telegram.message(GROUP, ALICE, "The next book is Dune by Frank Herbert"))
    other = telegram.push(telegram.message(GROUP, BOB, "@alice what time do we meet?",
                                           entities=[mention_entity("@alice what time do we meet?", "@alice")]))
    text = f"{MENTION} which book is next?"
    asked = telegram.push(telegram.message(GROUP, BOB, text, entities=[mention_entity(text, MENTION)]))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer to the mention")
    await settle()
    assert replies_to(telegram, said) == [] and replies_to(telegram, other) == []
    assert len(telegram.sent_messages(GROUP["id"])) == 1

    shown = visible(answer)
    link = f"https://t.me/c/1234567890/{said['message']['message_id']}"
    assert "Dune" in shown and "[1]" in shown
    assert f'<a href="{link}">' in answer.params["text"]
    assert any(line.startswith("[1] Alice") and link.removeprefix("https://") in line for line in shown.splitlines())


async def test_reply_to_bot_and_ask_command_are_answered(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    telegram.push(telegram.message(GROUP, ALICE, "Our meetup moved to the Lighthouse cafe"))
    asked = telegram.push(telegram.message(GROUP, BOB, f"/ask@{BOT_USERNAME} where is the meetup?"))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer to /ask")
    assert "Lighthouse" in visible(answer)

    bot_message = telegram.bot_message(answer)
    follow_up = telegram.push(telegram.message(GROUP, ALICE, "and which cafe was that again?", reply_to=bot_message))
    await eventually(lambda: replies_to(telegram, follow_up), what="answer to a reply to the bot")

    # A command addressed to another bot is not ours to answer.
    elsewhere = telegram.push(telegram.message(GROUP, BOB, "/ask@other_bot where is the meetup?"))
    await settle()
    assert replies_to(telegram, elsewhere) == []


async def test_forum_topic_reply_and_typing_stay_in_the_topic(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    telegram.push(telegram.message(FORUM, ALICE, "Release 2.4 ships on Thursday", thread_id=77))
    text = f"{MENTION} when does release 2.4 ship?"
    asked = telegram.push(telegram.message(FORUM, BOB, text, entities=[mention_entity(text, MENTION)], thread_id=77))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer in the topic")
    assert answer.params["message_thread_id"] == 77
    assert "Thursday" in visible(answer)
    typing = [c for c in telegram.calls_to("sendChatAction") if c.params["chat_id"] == FORUM["id"]]
    assert typing and all(c.params["action"] == "typing" and c.params["message_thread_id"] == 77 for c in typing)
    assert typing[0].at < answer.at


# -- media -------------------------------------------------------------------------------


def make_voice_note(tmp_path: Path, words: str) -> bytes:
    """A real OGG/Opus voice note: espeak-ng speaks, ffmpeg encodes as Telegram clients do."""
    if not (shutil.which("espeak-ng") and shutil.which("ffmpeg")):
        pytest.skip("espeak-ng and ffmpeg are needed to make a voice note")
    wav, ogg = tmp_path / "voice.wav", tmp_path / "voice.ogg"
    subprocess.run(["espeak-ng", "-w", str(wav), words], check=True, capture_output=True)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", "-b:a", "24k",
                    str(ogg)], check=True, capture_output=True)
    data = ogg.read_bytes()
    assert data[:4] == b"OggS" and b"OpusHead" in data[:200]
    return data


async def test_voice_note_is_fetched_via_getfile_and_answered(
    bot: Running, telegram: FakeTelegram, tmp_path: Path
) -> None:
    await bot.start()
    audio = make_voice_note(tmp_path, "the spare key is under the blue flower pot")
    file = telegram.add_file(audio, "voice/file_1.oga")
    voice = {"file_id": file.file_id, "file_unique_id": "v1", "duration": 3, "mime_type": "audio/ogg",
             "file_size": len(audio)}
    note = telegram.push(telegram.message(private_chat(ALICE), ALICE, voice=voice))
    [reply] = await eventually(lambda: replies_to(telegram, note), 120, "reply to the voice note")
    assert [c.params["file_id"] for c in telegram.calls_to("getFile")] == [file.file_id]
    assert telegram.downloads == ["voice/file_1.oga"]
    # Never silence: either the voice note was transcribed (and its words are what was asked),
    # or the sender is told clearly why not.
    assert bot.core is not None
    stored = await bot.core.store.get_message(f"telegram:{ALICE['id']}:{note['message']['message_id']}")
    assert stored is not None
    transcript = (stored.get("media_text") or "").lower()
    assert ("flower" in transcript and "flower" in bot.fake_llm.all_prompt_text()) or "voice" in visible(reply)


async def test_oversize_voice_gets_a_clear_reply_without_downloading(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    big = 25 * 1024 * 1024
    file = telegram.add_file(b"OggS", "voice/big.oga", declared_size=big)
    voice = {"file_id": file.file_id, "file_unique_id": "v2", "duration": 1500, "file_size": big}
    note = telegram.push(telegram.message(private_chat(BOB), BOB, voice=voice))
    [reply] = await eventually(lambda: replies_to(telegram, note), what="reply to the oversize voice note")
    assert "25.0 MB" in visible(reply) and "20 MB" in visible(reply)
    assert telegram.calls_to("getFile") == [] and telegram.downloads == []


async def test_photo_fetches_the_largest_size(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    sizes = []
    for name, (w, h) in {"s": (90, 60), "m": (320, 213), "x": (1280, 853)}.items():
        fake = telegram.add_file(b"\xff\xd8\xff\xe0 not really a jpeg " + name.encode(), f"photos/{name}.jpg")
        sizes.append({"file_id": fake.file_id, "file_unique_id": name, "width": w, "height": h,
                      "file_size": len(fake.data)})
    photo = telegram.push(telegram.message(private_chat(ALICE), ALICE, "receipt", photo=sizes))
    await eventually(lambda: replies_to(telegram, photo), 60, "reply to the photo")
    assert [c.params["file_id"] for c in telegram.calls_to("getFile")] == [sizes[-1]["file_id"]]
    assert telegram.downloads == ["photos/x.jpg"]


# -- delivery: exactly once, retry_after, splitting, pacing -------------------------------


async def test_redelivered_updates_are_answered_once(bot: Running, telegram: FakeTelegram) -> None:
    first = await bot.start()
    dm = private_chat(BOB)
    update = telegram.push(telegram.message(dm, BOB, "Remind me: the gate code is 4512"))
    await eventually(lambda: replies_to(telegram, update), what="first reply")
    # The process stops before its next getUpdates confirms the offset, so Telegram delivers
    # the same update_id again to the next process.
    await first.stop()
    telegram.push(json.loads(json.dumps(update)))
    second = await bot.start()
    await eventually(lambda: any(c.params.get("offset") == update["update_id"] + 1
                                 for c in telegram.calls_to("getUpdates")[-3:]), what="offset confirmed")
    # And the same update once more inside one process.
    await second.intake(Update.model_validate(update))
    await settle()
    assert len(replies_to(telegram, update)) == 1


async def test_429_is_waited_out_then_sent_exactly_once(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    telegram.rate_limit_next("sendMessage", retry_after=1)
    asked = telegram.push(telegram.message(private_chat(ALICE), ALICE, "hello there"))
    [reply] = await eventually(lambda: replies_to(telegram, asked), what="reply after 429")
    limited = [c for c in telegram.calls if c.method == "sendMessage" and c.status == 429]
    assert len(limited) == 1
    assert reply.at - limited[0].at >= 1.0
    assert reply.params["text"] == limited[0].params["text"]
    await settle()
    assert len(telegram.sent_messages(ALICE["id"])) == 1
    assert bot.core is not None  # the wait is counted for /metrics
    assert 'mnemo_rate_limit_waits_total{platform="telegram"} 1' in bot.core.metrics.render()


async def test_telegram_down_while_sending_is_retried_once_by_the_adapter_not_again_by_the_core(
    bot: Running, telegram: FakeTelegram
) -> None:
    """One retry layer per hop: a send that keeps failing is tried NETWORK_ATTEMPTS times in
    all (the core does not repeat the adapter's retries); a shorter outage is ridden out."""
    from adapters.telegram.outbound import NETWORK_ATTEMPTS

    def attempts() -> list[Any]:
        return [c for c in telegram.calls if c.method == "sendMessage"]

    await bot.start()
    telegram.fail_next("sendMessage", 100)
    lost = telegram.push(telegram.message(private_chat(ALICE), ALICE, "hello there"))
    await eventually(lambda: len(attempts()) >= NETWORK_ATTEMPTS, what="the retries")
    await settle(15)  # the core would retry after 1-10 s backoffs
    assert [c.status for c in attempts()] == [502] * NETWORK_ATTEMPTS
    assert not replies_to(telegram, lost)
    telegram.outages.clear()
    telegram.fail_next("sendMessage", NETWORK_ATTEMPTS - 1)
    asked = telegram.push(telegram.message(private_chat(BOB), BOB, "hello again"))
    await eventually(lambda: replies_to(telegram, asked), what="the reply after the outage")
    await settle()
    assert len(telegram.sent_messages(BOB["id"])) == 1


async def test_long_answer_is_split_under_4096_with_whole_footnotes_and_paced(
    bot: Running, telegram: FakeTelegram, fake_llm: FakeLLM
) -> None:
    await bot.start()
    dm = private_chat(ALICE)
    fact = telegram.push(telegram.message(dm, ALICE, "The Lisbon office wifi password is tangerine-42"))
    await eventually(lambda: replies_to(telegram, fact), what="reply to the fact")
    paragraph = ("The wifi in the Lisbon office uses the password you told me about <and> it rotates. " * 12).strip()
    fake_llm.script = ["\n\n".join([paragraph] * 12) + " Password: tangerine-42 [1]"]
    asked = telegram.push(telegram.message(dm, ALICE, "What is the Lisbon wifi password?"))
    await eventually(lambda: len(replies_to(telegram, asked)) >= 3 and
                     any("[1] Alice" in visible(c) for c in replies_to(telegram, asked)), 60, "split answer")
    await settle()
    parts = replies_to(telegram, asked)
    texts = [visible(c) for c in parts]
    assert all(len(c.params["text"]) <= 4096 for c in parts)
    assert "".join(texts).count("it rotates.") == 12 * 12
    assert all(t.rstrip().endswith("rotates.") for t in texts[:-1])  # split on sentence/paragraph ends
    last = texts[-1].splitlines()
    footnotes = [line for line in last if line.startswith("[1] ")]
    assert len(footnotes) == 1 and "tangerine-42" in footnotes[0]
    # Telegram asks for about one message per second in a chat.
    gaps = [b.at - a.at for a, b in itertools.pairwise(parts)]
    assert min(gaps) >= 0.9


# -- privacy: private answers, files, admins ----------------------------------------------


async def test_memory_and_export_in_a_group_go_to_the_users_dm(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    telegram.push(telegram.message(GROUP, ALICE, "I prefer the Tuesday sessions"))
    memory = telegram.push(telegram.message(GROUP, ALICE, f"/memory@{BOT_USERNAME}"))
    [dm_reply] = await eventually(lambda: telegram.sent_messages(ALICE["id"]), what="private /memory answer")
    assert "Tuesday" in visible(dm_reply)
    assert replies_to(telegram, memory) == []

    telegram.push(telegram.message(GROUP, ALICE, "/export"))
    [document] = await eventually(lambda: telegram.calls_to("sendDocument"), what="export file")
    assert document.params["chat_id"] == ALICE["id"]
    exported = json.loads(document.params["document"].data)
    assert any("Tuesday" in m["text"] for m in exported["messages"])

    # Someone who never pressed Start is told so, briefly, in the group.
    telegram.dm_blocked.add(BOB["id"])
    asked = telegram.push(telegram.message(GROUP, BOB, "/memory"))
    [notice] = await eventually(lambda: replies_to(telegram, asked), what="start-the-bot notice")
    assert f"t.me/{BOT_USERNAME}" in visible(notice) and "Start" in visible(notice)
    assert telegram.sent_messages(BOB["id"]) == []


async def test_only_chat_admins_change_settings(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    refused = telegram.push(telegram.message(GROUP, BOB, "/settings respond_to all"))
    [no] = await eventually(lambda: replies_to(telegram, refused), what="refusal")
    assert "admins" in visible(no)
    assert any(c.params == {"chat_id": GROUP["id"], "user_id": BOB["id"]} for c in telegram.calls_to("getChatMember"))

    telegram.member_status[(GROUP["id"], ALICE["id"])] = "administrator"
    changed = telegram.push(telegram.message(GROUP, ALICE, "/settings respond_to all"))
    [yes] = await eventually(lambda: replies_to(telegram, changed), what="change confirmed")
    assert "respond_to: mentions -> all" in visible(yes)
    # In effect at once: an unaddressed group message is now answered.
    plain = telegram.push(telegram.message(GROUP, BOB, "anyone know a good pizza place?"))
    await eventually(lambda: replies_to(telegram, plain), what="answer without a mention")


# -- edits, migration, commands -----------------------------------------------------------


async def test_edit_updates_memory_and_migration_keeps_it(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    assert bot.core is not None
    old_group = basic_group(-4001, "Family")
    said = telegram.push(telegram.message(old_group, ALICE, "Grandma's birthday dinner is at Luigi's"))
    await eventually(lambda: telegram.calls_to("getUpdates") and not telegram.updates, what="update consumed")
    telegram.push(telegram.message(old_group, ALICE, "Grandma's birthday dinner is at Mario's trattoria",
                                   edited_of=said["message"]))
    key = f"telegram:{old_group['id']}:{said['message']['message_id']}"

    async def edited() -> bool:
        doc = await bot.core.store.get_message(key)  # type: ignore[union-attr]
        return doc is not None and "Mario" in doc["text"]

    deadline = time.monotonic() + 20
    while not await edited():
        assert time.monotonic() < deadline, "edit not applied"
        await asyncio.sleep(0.1)

    # The group becomes a supergroup: Telegram posts migrate_to_chat_id in the old chat.
    new_group = supergroup(-1004001, "Family")
    telegram.push(telegram.message(old_group, ALICE, migrate_to_chat_id=new_group["id"]))
    text = f"{MENTION} where is grandma's birthday dinner?"
    asked = telegram.push(telegram.message(new_group, BOB, text, entities=[mention_entity(text, MENTION)]))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer after migration")
    assert "Mario" in visible(answer) and "Luigi" not in visible(answer)


async def test_an_edit_of_a_queued_message_is_remembered_and_answered_with_the_new_text(
    bot: Running, fake_llm: FakeLLM, telegram: FakeTelegram
) -> None:
    """Issue 14 defect 1: the edit arrives while its message waits behind a slow answer."""
    await bot.start()
    assert bot.core is not None
    dm = private_chat(ALICE)
    warm = telegram.push(telegram.message(dm, ALICE, "Hello there"))
    await eventually(lambda: replies_to(telegram, warm), 180, "the first reply (embedding model loaded)")
    fake_llm.hang = True  # the next answer takes a while: what follows queues behind it
    before = len(fake_llm.answer_requests())
    slow = telegram.push(telegram.message(dm, ALICE, "What should I cook tonight?"))
    await eventually(lambda: len(fake_llm.answer_requests()) > before, what="the slow answer to start")
    said = telegram.push(telegram.message(dm, ALICE, "My locker code is 1111"))
    key = f"telegram:{dm['id']}:{said['message']['message_id']}"
    await eventually(lambda: not telegram.updates, what="the statement consumed")
    telegram.push(telegram.message(dm, ALICE, "My locker code is 4471", edited_of=said["message"]))

    async def edited() -> bool:
        doc = await bot.core.store.get_message(key)  # type: ignore[union-attr]
        return doc is not None and "4471" in doc["text"]

    deadline = time.monotonic() + 20
    while not await edited():
        assert time.monotonic() < deadline, "edit not stored"
        await asyncio.sleep(0.1)
    assert not replies_to(telegram, said)  # still queued behind the slow answer
    fake_llm.hang = False
    await eventually(lambda: replies_to(telegram, slow) and replies_to(telegram, said), what="both replies")
    statement_prompt = str(fake_llm.answer_requests()[-1]["messages"])
    assert "4471" in statement_prompt and "1111" not in statement_prompt
    [hit] = await bot.core.index.search(Scope("dm", "telegram", str(ALICE["id"])), "locker code", 1)
    assert "4471" in hit.document and "1111" not in hit.document

    asked = telegram.push(telegram.message(dm, ALICE, "What is my locker code?"))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="the answer")
    assert "4471" in visible(answer) and "1111" not in visible(answer)


async def test_commands_are_registered_on_start(bot: Running, telegram: FakeTelegram) -> None:
    await bot.start()
    [registered] = await eventually(lambda: telegram.calls_to("setMyCommands"), what="setMyCommands")
    names = [c["command"] for c in registered.params["commands"]]
    assert names == ["start", "help", "ask", "memory", "profile", "forget", "export", "settings", "dashboard"]
    # polling mode clears a leftover webhook first (right after setMyCommands: wait for it)
    await eventually(lambda: telegram.calls_to("deleteWebhook"), what="deleteWebhook")


# -- webhook mode (in process) -----------------------------------------------------------


async def test_webhook_checks_secret_and_acknowledges(bot: Running, telegram: FakeTelegram) -> None:
    from aiohttp import web

    adapter = await bot.start(webhook_url="https://bot.example.com/telegram/webhook", webhook_secret=SECRET)
    [hook] = await eventually(lambda: telegram.calls_to("setWebhook"), what="setWebhook")
    assert hook.params["url"] == "https://bot.example.com/telegram/webhook"
    assert hook.params["secret_token"] == SECRET
    assert telegram.calls_to("getUpdates") == []

    app = web.Application()
    for method, path, handler in adapter.routes():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    update = telegram.message(private_chat(BOB), BOB, "webhooks are working")
    try:
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                async with http.post(url, json=update, headers=headers) as resp:
                    assert resp.status == 401
            good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
            async with http.post(url, data=b"{not json", headers=good) as resp:
                assert resp.status == 400
            for _ in range(2):  # Telegram redelivers when unsure: answered once
                started = time.monotonic()
                async with http.post(url, json=update, headers=good) as resp:
                    assert resp.status == 200
                assert time.monotonic() - started < 2  # acknowledged before the answer is made
        await eventually(lambda: replies_to(telegram, update), what="answer to the webhook update")
        await settle()
        assert len(replies_to(telegram, update)) == 1
    finally:
        await runner.cleanup()


# -- `mnemo run` as a subprocess (black box: env vars only) --------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mnemo(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_sync(check: Callable[[], Any], proc: subprocess.Popen[str], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            output = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"mnemo exited ({proc.returncode}) waiting for {what}: {output[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop_mnemo(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def mnemo_env(base_env: dict[str, str], fake_llm: FakeLLM) -> dict[str, str]:
    # Embeddings from the loopback model server too: the subprocess starts in seconds instead
    # of loading the local model (the in-process tests cover the local one).
    return {**base_env, **fake_llm.env(), "MNEMO_EMBEDDING_MODEL": "openai/fake-embedding"}


def test_mnemo_run_polling(base_env: dict[str, str], fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    env = {**mnemo_env(base_env, fake_llm), "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": telegram.api_base,
           "MNEMO_HTTP_PORT": str(free_port())}
    proc = start_mnemo(env)
    try:
        dm = private_chat(ALICE)
        fact = telegram.push(telegram.message(dm, ALICE, "My locker number at the gym is 318"))
        wait_sync(lambda: replies_to(telegram, fact), proc, 120, "reply to the first message")
        question = telegram.push(telegram.message(dm, ALICE, "What is my gym locker number?"))
        [answer] = wait_sync(lambda: replies_to(telegram, question), proc, 60, "answer")
        assert "318" in visible(answer) and "[1] Alice" in visible(answer)
        assert answer.params["reply_parameters"]["message_id"] == question["message"]["message_id"]
    finally:
        code, err = stop_mnemo(proc)
    assert code == 0, err[-3000:]
    # Message content never logged at INFO (words: a bare number could match a log timestamp).
    assert "locker" not in err and "gym" not in err


def test_mnemo_run_webhook(base_env: dict[str, str], fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    port = free_port()
    env = {**mnemo_env(base_env, fake_llm), "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": telegram.api_base,
           "TELEGRAM_WEBHOOK_URL": "https://mnemo.example.org/telegram/webhook",
           "TELEGRAM_WEBHOOK_SECRET": SECRET, "MNEMO_HTTP_PORT": str(port)}
    proc = start_mnemo(env)
    url = f"http://127.0.0.1:{port}/telegram/webhook"

    def post(update: dict[str, Any], secret: str) -> int:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, data=json.dumps(update).encode(), method="POST", headers={
            "Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    try:
        wait_sync(lambda: telegram.calls_to("setWebhook"), proc, 120, "setWebhook")
        text = f"{MENTION} is the webhook on?"
        update = telegram.message(GROUP, BOB, text, entities=[mention_entity(text, MENTION)])
        assert wait_sync(lambda: post(update, "not-the-secret") or None, proc, 30, "HTTP server") == 401
        assert post(update, SECRET) == 200
        [answer] = wait_sync(lambda: replies_to(telegram, update), proc, 60, "answer via webhook")
        assert answer.params["chat_id"] == GROUP["id"]
        assert telegram.calls_to("getUpdates") == []
        assert telegram.calls_to("setWebhook")[0].params["secret_token"] == SECRET
    finally:
        code, err = stop_mnemo(proc)
    assert code == 0, err[-3000:]




async def test_text_mention_addresses_the_bot_and_anonymous_admins_are_admins(
    bot: Running, telegram: FakeTelegram
) -> None:
    await bot.start()
    telegram.push(telegram.message(GROUP, ALICE, "The treasurer this year is Priya"))
    # A mention picked from the member list: a text_mention entity carrying the bot's user.
    text = "Mnemo who is the treasurer?"
    entity = {"type": "text_mention", "offset": 0, "length": 5, "user": BOT_USER}
    asked = telegram.push(telegram.message(GROUP, BOB, text, entities=[entity]))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer to a text_mention")
    assert "Priya" in visible(answer)

    # An anonymous admin posts as the group itself (sender_chat): Telegram only lets admins do that.
    anonymous = user(1087968824, "Group", "GroupAnonymousBot")
    changed = telegram.push(telegram.message(GROUP, anonymous, "/settings citations off", sender_chat=GROUP))
    [yes] = await eventually(lambda: replies_to(telegram, changed), what="anonymous admin's change")
    assert "citations: on -> off" in visible(yes)


async def test_anonymous_admins_get_no_memory_contents_and_other_bots_are_ignored(
    bot: Running, telegram: FakeTelegram
) -> None:
    await bot.start()
    anonymous = user(1087968824, "Group", "GroupAnonymousBot") | {"is_bot": True}
    telegram.push(telegram.message(GROUP, anonymous, "The vault code is 5521", sender_chat=GROUP))
    for command in ("/memory", "/export", "/forget all"):
        asked = telegram.push(telegram.message(GROUP, anonymous, command, sender_chat=GROUP))
        [reply] = await eventually(lambda asked=asked: replies_to(telegram, asked), what=f"anonymous {command}")
        assert "anonymous admin" in visible(reply) and "5521" not in visible(reply)
    assert telegram.calls_to("sendDocument") == []
    # nothing was forgotten on behalf of "the group": the message is still in its memory
    def mentioning(sender: dict[str, Any], text: str) -> dict[str, Any]:
        text = f"{MENTION} {text}"
        return telegram.push(telegram.message(GROUP, sender, text, entities=[mention_entity(text, MENTION)]))

    asked = mentioning(ALICE, "what is the vault code?")
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer about the vault")
    assert "5521" in visible(answer)
    # another bot talking in the group is neither answered nor remembered
    other_bot = user(5550001, "Helper", "helper_bot") | {"is_bot": True}
    said = mentioning(other_bot, "the vault code changed to 9999")
    later = mentioning(ALICE, "has the vault code changed?")
    [answer] = await eventually(lambda: replies_to(telegram, later), what="answer after the bot's message")
    assert replies_to(telegram, said) == [] and "9999" not in visible(answer)


async def test_undecodable_text_is_stored_cleaned_and_an_unstorable_update_never_stops_intake(
    bot: Running, telegram: FakeTelegram
) -> None:
    await bot.start()
    dm = private_chat(ALICE)
    broken = telegram.push(telegram.message(dm, ALICE, "my badge number is 7781 \ud83d and that's it"))
    await eventually(lambda: replies_to(telegram, broken), 180, "reply to the text with a lone surrogate")
    assert bot.core is not None
    stored = await bot.core.store.get_message(f"telegram:{ALICE['id']}:{broken['message']['message_id']}")
    assert stored is not None and stored["text"] == "my badge number is 7781 \ufffd and that's it"
    # Larger than any MongoDB document: it can never be stored. It is quarantined and confirmed,
    # and the messages after it are answered.
    huge = telegram.push(telegram.message(dm, ALICE, "x" * (17 * 1024 * 1024)))
    after = telegram.push(telegram.message(dm, ALICE, "what is my badge number?"))
    [answer] = await eventually(lambda: replies_to(telegram, after), 120, "answer after the unstorable update")
    assert "7781" in visible(answer)
    assert 'mnemo_quarantined_total{platform="telegram"} 1' in bot.core.metrics.render()
    kept = await bot.core.store.db["quarantine"].find_one({"event_id": str(huge["update_id"])})
    assert kept is not None and "DocumentTooLarge" in kept["error"]


async def test_profile_goes_to_the_dm_and_fact_footnotes_link_the_source_message(
    bot: Running, telegram: FakeTelegram, fake_llm: FakeLLM
) -> None:
    await bot.start()
    said = telegram.push(telegram.message(GROUP, ALICE, "I work at Initech Labs since Monday"))
    profile = telegram.push(telegram.message(GROUP, ALICE, f"/profile@{BOT_USERNAME}"))
    [private] = await eventually(lambda: telegram.sent_messages(ALICE["id"]), 120, "private /profile answer")
    link = f"https://t.me/c/1234567890/{said['message']['message_id']}"
    shown = visible(private)
    assert "Alice works at Initech Labs" in shown and "I work at Initech Labs since Monday" in shown, shown
    assert link in shown  # the source message, linked
    assert replies_to(telegram, profile) == []  # nothing about Alice in the group itself

    text = f"{MENTION} where Alice works?"
    asked = telegram.push(telegram.message(GROUP, BOB, text, entities=[mention_entity(text, MENTION)]))
    [answer] = await eventually(lambda: replies_to(telegram, asked), what="answer from the fact")
    notes = [line for line in visible(answer).splitlines() if line.startswith("[") and "Fact" in line]
    assert notes and "Alice works at Initech Labs" in notes[0] and "learned from Alice" in notes[0], visible(answer)
    assert "I work at Initech Labs since Monday" in notes[0] and link.removeprefix("https://") in notes[0]
    assert fake_llm.learning_requests()  # learned through the record_facts tool
