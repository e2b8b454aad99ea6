"""The Slack adapter against a loopback Slack: real slack-bolt/slack-sdk pointed at the fake
Web API, real signed HTTP requests to /slack/events, real stores and core. Assertions are on
what reaches Slack: text, thread_ts, footnote permalinks, exactly-once delivery."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.slack import SlackAdapter
from bot.http import HttpServer, build_http_app
from core.engine import Core
from core.models import Scope
from tests.conftest import REPO
from tests.fakes.llm import FakeLLM
from tests.fakes.slack import (
    BOT_USER_ID,
    FakeSlack,
    app_mention,
    channel_message,
    event_callback,
    sign,
    slash_form,
    socket_envelope,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0GENERAL"
ALICE, BOB = "U0ALICE", "U0BOB"
MENTION = f"<@{BOT_USER_ID}>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    fake.add_user(ALICE, "Alice")
    fake.add_user(BOB, "Bob")
    yield fake
    fake.stop()


@dataclass
class Bot:
    core: Core
    adapter: SlackAdapter
    url: str
    session: aiohttp.ClientSession

    async def post(self, body: str, *, headers: dict[str, str] | None = None, secret: str = SECRET,
                   timestamp: int | None = None, form: bool = False) -> aiohttp.ClientResponse:
        all_headers = {
            "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
            **sign(secret, body, timestamp),
            **(headers or {}),
        }
        async with self.session.post(f"{self.url}/slack/events", data=body.encode(), headers=all_headers) as resp:
            await resp.read()
            return resp

    async def event(self, event: dict[str, Any], **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.post(json.dumps(event_callback(event, kwargs.pop("event_id", None))), **kwargs)

    async def settle(self) -> None:
        """Wait until every accepted event is stored and processed."""
        for _ in range(400):
            if not self.adapter._tasks and not self.core.runner.pending:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the bot did not settle")


async def start_bot(core: Core, fake: FakeSlack, **adapter_args: Any) -> tuple[SlackAdapter, HttpServer,
                                                                              asyncio.Task[None]]:
    adapter = SlackAdapter(core, bot_token=fake.bot_token, api_base=fake.api_base, **adapter_args)
    core.register(adapter)
    http = HttpServer(build_http_app(core), "127.0.0.1", free_port())
    for method, path, handler in adapter.routes():
        http.add_route(method, path, handler)
    await http.start()
    return adapter, http, asyncio.create_task(adapter.run())


@pytest.fixture
async def bot(make_core: Any, fake_slack: FakeSlack, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test",
                           max_file_bytes=2 * 1024 * 1024)
    adapter, http, running = await start_bot(core, fake_slack, signing_secret=SECRET)
    async with aiohttp.ClientSession() as session:
        yield Bot(core, adapter, f"http://127.0.0.1:{http.port}", session)
    await adapter.stop()
    await asyncio.wait_for(running, 10)
    await http.stop()


def footnote_links(text: str) -> list[str]:
    return re.findall(r"<(https?://[^|>]+)\|link>", text)


# -- HTTP request verification -----------------------------------------------------------


async def test_url_verification_and_refused_requests(bot: Bot, fake_slack: FakeSlack) -> None:
    challenge = json.dumps({"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                            "type": "url_verification"})
    ok = await bot.post(challenge)
    assert ok.status == 200
    async with bot.session.post(f"{bot.url}/slack/events", data=challenge,
                                headers={"Content-Type": "application/json", **sign(SECRET, challenge)}) as resp:
        # Slack accepts the challenge back as JSON (or plain text)
        assert resp.status == 200
        assert (await resp.json())["challenge"] == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"

    dm = channel_message("D0ALICE", ALICE, "My locker code is 4817")
    assert (await bot.event(dm, secret="not-the-secret")).status == 401
    assert (await bot.event(dm, timestamp=int(time.time()) - 6 * 60)).status == 401  # replayed: too old
    async with bot.session.post(f"{bot.url}/slack/events", data=json.dumps(event_callback(dm)),
                                headers={"Content-Type": "application/json"}) as unsigned:
        assert unsigned.status == 401
    await asyncio.sleep(0.5)
    await bot.settle()
    assert await bot.core.store.messages.count_documents({}) == 0  # nothing refused was stored
    assert fake_slack.posts() == []


async def _raw_post(url: str, headers: dict[str, str], declared: int | None, sent: bytes) -> int:
    """POST over a raw socket: send the head and only `sent` of the body, then read the status
    (a server that waited for the whole body would never answer: asyncio.wait_for fails)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = ["POST /slack/events HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if declared is None:
        head.append("Transfer-Encoding: chunked")
        sent = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in [sent[i:i + 65536] for i in
                        range(0, len(sent), 65536)])
    else:
        head.append(f"Content-Length: {declared}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + sent)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_unsigned_or_oversized_bodies_are_refused_before_they_are_read(bot: Bot) -> None:
    big = 24 * 1024 * 1024
    # unsigned: refused on its headers while the 24 MB body is still to come
    assert await _raw_post(bot.url, {}, big, b"{") == 401
    assert await _raw_post(bot.url, {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "1"}, big, b"{") \
        == 401  # a replayed timestamp, same
    # signed headers but over 1 MB: declared, or streamed without a length
    fresh = sign(SECRET, "x")
    assert await _raw_post(bot.url, fresh, big, b"{") == 413
    assert await _raw_post(bot.url, fresh, None, b"x" * (2 * 1024 * 1024)) == 413
    assert await bot.core.store.messages.count_documents({}) == 0


# -- channels, threads, footnotes, exactly once -------------------------------------------


async def test_mention_in_channel_answers_in_thread_once_with_permalink_footnote(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    fact = channel_message(CHANNEL, ALICE, "The launch review moved to Thursday at 3pm in room Nile.")
    started = time.monotonic()
    response = await bot.event(fact)
    assert response.status == 200 and time.monotonic() - started < 3  # acknowledged at once
    await bot.settle()
    assert fake_slack.posts() == []  # remembered, not answered: nobody addressed the bot

    question = channel_message(CHANNEL, BOB, f"{MENTION} when is the launch review?")
    # Slack delivers one message twice: as `message` and as `app_mention` (different event ids),
    # and then retries the mention as if our 200 had been lost.
    first = await bot.event(question)
    second = await bot.event(app_mention(question))
    retry = await bot.event(app_mention(question), headers={"X-Slack-Retry-Num": "1",
                                                            "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status == second.status == retry.status == 200
    await bot.settle()

    posts = fake_slack.posts()
    assert len(posts) == 1, [p.args for p in posts]
    post = posts[0]
    assert post.args["channel"] == CHANNEL
    assert post.args["thread_ts"] == question["ts"]  # a new thread under the question
    text = post.args["text"]
    assert "Thursday at 3pm" in text and "[1]" in text
    # the footnote is Alice's message, linked by its chat.getPermalink permalink (mrkdwn link)
    assert re.search(r"^\[1\] Alice, \d{4}-\d{2}-\d{2}: ", text, re.MULTILINE), text
    assert footnote_links(text) == [fake_slack.permalink(CHANNEL, fact["ts"])]
    assert len(fake_slack.calls_to("chat.getPermalink")) == 2  # one per message, not per event

    # A reply inside that thread mentioning the bot is answered in the same thread.
    follow_up = channel_message(CHANNEL, ALICE, f"{MENTION} which room is the launch review in?",
                                thread_ts=question["ts"], parent_user_id=BOB)
    await bot.event(follow_up)
    await bot.settle()
    posts = fake_slack.posts()
    assert len(posts) == 2
    assert posts[1].args["thread_ts"] == question["ts"]
    assert "Nile" in posts[1].args["text"]


async def test_event_is_stored_before_slack_gets_its_200_and_refined_after(bot: Bot, fake_slack: FakeSlack) -> None:
    # A slow Web API holds back neither the store nor the 200: the name and permalink lookups
    # come after. (Acknowledging first and storing after the lookups fails the first check.)
    fake_slack.add_user("U0CAROL", "Carol")
    fake_slack.delay.update({"users.info": 1.5, "chat.getPermalink": 1.5})
    fact = channel_message(CHANNEL, "U0CAROL", "The staging database lives on host pg-7.")
    key = f"slack:{CHANNEL}:{fact['ts']}"
    started = time.monotonic()
    response = await bot.event(fact)
    assert response.status == 200 and time.monotonic() - started < 1.0
    stored = await bot.core.store.messages.find_one({"key": key})
    assert stored is not None and stored["text"] == fact["text"]

    await bot.settle()
    stored = await bot.core.store.messages.find_one({"key": key})
    assert stored is not None and stored["author_name"] == "Carol"  # looked up after the store, written over it
    assert stored["link"] == fake_slack.permalink(CHANNEL, fact["ts"])
    # The lookup finished before the core remembered it: indexed under her name, not her id.
    [hit] = await bot.core.index.search(Scope("group", "slack", CHANNEL), "staging database host", 1)
    assert hit.document.startswith("Carol: ")

    question = channel_message(CHANNEL, BOB, f"{MENTION} where does the staging database live?")
    await bot.event(question)
    await bot.settle()
    [post] = fake_slack.posts()
    assert re.search(r"^\[1\] Carol, ", post.args["text"], re.MULTILINE), post.args["text"]
    assert footnote_links(post.args["text"]) == [fake_slack.permalink(CHANNEL, fact["ts"])]


async def test_dm_is_always_answered_and_mrkdwn_is_escaped(bot: Bot, fake_slack: FakeSlack,
                                                           fake_llm: FakeLLM) -> None:
    fake_llm.script = ["Use <b> & <!channel> carefully."]
    dm = channel_message("D0ALICE", ALICE, "how should I format things?")
    await bot.event(dm)
    await bot.settle()
    [post] = fake_slack.posts()
    assert post.args["channel"] == "D0ALICE" and post.args["thread_ts"] == dm["ts"]
    # Slack's control characters are escaped: no accidental @channel ping, no broken markup.
    assert post.args["text"] == "Use &lt;b&gt; &amp; &lt;!channel&gt; carefully."


async def test_long_reply_is_split_below_slack_limit_with_footnotes_kept_whole(
    bot: Bot, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    await bot.event(channel_message("D0ALICE", ALICE, "Project Kestrel ships in May."))
    await bot.settle()
    sentence = "Kestrel is a long project with many careful steps to follow. "
    fake_llm.script = [sentence * 1200 + "It ships in May [1]."]  # ~74,000 characters
    before = len(fake_slack.posts())
    question = channel_message("D0ALICE", ALICE, "tell me everything about Kestrel")
    await bot.event(question)
    await bot.settle()
    posts = fake_slack.posts()[before:]
    assert len(posts) == 2
    assert all(len(p.args["text"]) <= 40_000 for p in posts)
    assert all(p.args["thread_ts"] == question["ts"] for p in posts)
    assert posts[0].args["text"].endswith("follow.")  # split at a sentence boundary
    assert posts[1].at - posts[0].at >= 0.9  # paced: about one message per second per channel
    assert re.search(r"^\[1\] Alice, .*<https://[^|]+\|link>$", posts[-1].args["text"], re.MULTILINE)


# -- 429 ---------------------------------------------------------------------------------


async def test_rate_limited_reply_is_delayed_not_dropped_or_doubled(bot: Bot, fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit["chat.postMessage"] = 2
    fake_slack.retry_after = 1
    dm = channel_message("D0ALICE", ALICE, "hello there")
    await bot.event(dm)
    await bot.settle()
    attempts = fake_slack.calls_to("chat.postMessage", ok_only=False)
    assert [c.status for c in attempts] == [429, 429, 200]
    assert attempts[-1].at - attempts[0].at >= 1.9  # Retry-After honoured each time
    assert len(fake_slack.posts()) == 1 and fake_slack.posts()[0].args["thread_ts"] == dm["ts"]
    # Each wait is counted on /metrics.
    async with bot.session.get(f"{bot.url}/metrics") as metrics:
        assert 'mnemo_rate_limit_waits_total{platform="slack"} 2' in await metrics.text()


# -- files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    if not (shutil.which("espeak-ng") and shutil.which("ffmpeg")):
        pytest.skip("espeak-ng and ffmpeg are needed to make a real voice clip")
    from PIL import Image, ImageDraw, ImageFont

    folder = tmp_path_factory.mktemp("media")
    wav, ogg = folder / "note.wav", folder / "note.ogg"
    subprocess.run(["espeak-ng", "-w", str(wav), "The server password rotates every Friday."], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libopus", str(ogg)],
                   check=True)
    image = Image.new("RGB", (640, 120), "white")
    font = ImageFont.load_default(size=32) if hasattr(ImageFont, "load_default") else None
    ImageDraw.Draw(image).text((20, 40), "Standup moved to 9:45", fill="black", font=font)
    png = folder / "board.png"
    image.save(png)
    return {"ogg": ogg.read_bytes(), "png": png.read_bytes()}


async def test_file_share_downloads_audio_and_image_with_the_bot_token(
    bot: Bot, fake_slack: FakeSlack, media_files: dict[str, bytes]
) -> None:
    clip = fake_slack.add_file("F0CLIP", "audio_message.ogg", media_files["ogg"], "audio/ogg")
    photo = fake_slack.add_file("F0PHOTO", "board.png", media_files["png"], "image/png")
    events = [
        channel_message("D0ALICE", ALICE, "", subtype="file_share", files=[clip], upload=False),
        channel_message("D0ALICE", ALICE, "what does this say?", subtype="file_share", files=[photo]),
    ]
    for event in events:
        await bot.event(event)
    await bot.settle()
    assert sorted(name for name, _ in fake_slack.downloads) == ["audio_message.ogg", "board.png"]
    assert all(auth == f"Bearer {fake_slack.bot_token}" for _, auth in fake_slack.downloads)
    posts = fake_slack.posts()
    assert [p.args["thread_ts"] for p in posts] == [e["ts"] for e in events]  # each answered, in order
    for post in posts:
        assert "couldn't download" not in post.args["text"] and "files:read" not in post.args["text"]
    # the bytes that arrived were the real clip and picture: transcribed and read
    stored = {d["message_id"]: d async for d in bot.core.store.messages.find({"conversation_id": "D0ALICE"})}
    voice, image = stored[events[0]["ts"]], stored[events[1]["ts"]]
    assert voice["media_kind"] == "voice" and "password" in voice["media_text"].lower()
    assert image["media_kind"] == "image" and "Standup" in image["media_text"]


async def test_oversize_and_unreadable_files_get_a_clear_reply(
    bot: Bot, fake_slack: FakeSlack, media_files: dict[str, bytes]
) -> None:
    big = fake_slack.add_file("F0BIG", "huge.ogg", b"x", "audio/ogg")
    big["size"] = 30 * 1024 * 1024  # Slack says how big it is before we download anything
    gone = fake_slack.add_file("F0GONE", "gone.png", b"", "image/png")
    gone["url_private_download"] = gone["url_private_download"].replace("gone.png", "missing.png")
    await bot.event(channel_message("D0ALICE", ALICE, "", subtype="file_share", files=[big]))
    await bot.event(channel_message("D0ALICE", ALICE, "", subtype="file_share", files=[gone]))
    await bot.settle()
    texts = [p.args["text"] for p in fake_slack.posts()]
    assert len(texts) == 2
    assert "huge.ogg" in texts[0] and "30.0 MB" in texts[0] and "saved" in texts[0]
    assert "huge.ogg" not in [name for name, _ in fake_slack.downloads]  # refused before download
    assert "couldn't download" in texts[1] and "saved" in texts[1]


async def test_bot_token_is_never_sent_outside_slack(bot: Bot, fake_slack: FakeSlack) -> None:
    # An external file (e.g. a Google Drive link shared in Slack) carries a foreign URL; here a
    # host other than the Web API's, which would record any Authorization header it got.
    external = fake_slack.add_file("F0EXT", "plan.png", b"png", "image/png")
    external.update(is_external=True, url_private=external["url_private"].replace("127.0.0.1", "localhost"),
                    url_private_download=None)
    await bot.event(channel_message("D0ALICE", ALICE, "see this", subtype="file_share", files=[external]))
    await bot.settle()
    assert fake_slack.downloads == []
    [post] = fake_slack.posts()
    assert "outside Slack" in post.args["text"]


async def test_edited_message_replaces_what_is_remembered(bot: Bot, fake_slack: FakeSlack) -> None:
    original = channel_message(CHANNEL, ALICE, "The team dinner is at Luigi's.")
    await bot.event(original)
    await bot.settle()
    edited = {**original, "text": "The team dinner is at Mama Rosa's."}
    await bot.event({"type": "message", "subtype": "message_changed", "channel": CHANNEL, "hidden": True,
                     "ts": f"{float(original['ts']) + 5:.6f}", "message": edited, "previous_message": original})
    await bot.settle()
    await bot.event(channel_message(CHANNEL, BOB, f"{MENTION} where is the team dinner?"))
    await bot.settle()
    [post] = fake_slack.posts()
    assert "Mama Rosa" in post.args["text"] and "Luigi" not in post.args["text"]


async def test_download_without_files_read_scope_is_explained(
    bot: Bot, fake_slack: FakeSlack, media_files: dict[str, bytes]
) -> None:
    fake_slack.files_read_granted = False  # the app was installed without files:read
    photo = fake_slack.add_file("F0P", "board.png", media_files["png"], "image/png")
    await bot.event(channel_message("D0ALICE", ALICE, "", subtype="file_share", files=[photo]))
    await bot.settle()
    [post] = fake_slack.posts()
    assert "board.png" in post.args["text"] and "files:read" in post.args["text"]


async def test_malformed_signed_body_is_a_client_error(bot: Bot) -> None:
    response = await bot.post('{"type": "event_callback", "event": ')
    assert response.status == 400
    unsigned = await bot.post('{"type": "event_callback", "event": ', secret="wrong")
    assert unsigned.status == 401


# -- slash command -------------------------------------------------------------------------


async def test_slash_commands_answer_privately_and_only_admins_change_settings(
    bot: Bot, fake_slack: FakeSlack
) -> None:
    fake_slack.add_user("U0ADA", "Ada", admin=True)
    await bot.event(channel_message(CHANNEL, ALICE, "Our deploy window is Tuesday night."))
    await bot.settle()
    response_url = f"{fake_slack.url}/response/1"

    started = time.monotonic()
    ack = await bot.post(slash_form("memory", user=ALICE, channel=CHANNEL, response_url=response_url), form=True)
    assert ack.status == 200 and time.monotonic() - started < 3
    await bot.settle()
    [private] = fake_slack.calls_to("chat.postEphemeral")
    assert private.args["channel"] == CHANNEL and private.args["user"] == ALICE
    assert "deploy window" in private.args["text"]
    assert fake_slack.posts() == []  # nothing about Alice's memory went public

    # a member who is not a workspace admin is refused, and nothing changes
    await bot.post(slash_form("settings respond_to all", user=BOB, channel=CHANNEL, response_url=response_url),
                   form=True)
    await bot.settle()
    assert (await bot.core.settings.get(f"slack:{CHANNEL}")).respond_to == "mentions"
    refusal = fake_slack.posts()[-1].args["text"] + fake_slack.calls_to("chat.postEphemeral")[-1].args["text"]
    assert "admin" in refusal
    # a workspace admin (users.info is_admin) changes it, effective on the next message
    await bot.post(slash_form("settings respond_to all", user="U0ADA", channel=CHANNEL, response_url=response_url),
                   form=True)
    await bot.settle()
    assert (await bot.core.settings.get(f"slack:{CHANNEL}")).respond_to == "all"
    before = len(fake_slack.posts())
    plain = channel_message(CHANNEL, BOB, "when is the deploy window?")
    await bot.event(plain)
    await bot.settle()
    assert [p.args["thread_ts"] for p in fake_slack.posts()[before:]] == [plain["ts"]]


async def test_slash_ask_export_and_a_channel_the_bot_is_not_in(bot: Bot, fake_slack: FakeSlack) -> None:
    await bot.event(channel_message(CHANNEL, ALICE, "The office plant is named Fernando."))
    await bot.settle()
    response_url = f"{fake_slack.url}/response/2"

    await bot.post(slash_form("ask what is the office plant called?", user=BOB, channel=CHANNEL,
                              response_url=response_url), form=True)
    await bot.settle()
    [answer] = fake_slack.posts()
    assert answer.args["channel"] == CHANNEL and not answer.args.get("thread_ts")
    assert answer.args["text"].startswith(f"<@{BOB}> asked: what is the office plant called?")
    assert "Fernando" in answer.args["text"]
    assert footnote_links(answer.args["text"])  # cited with a permalink

    await bot.post(slash_form("export", user=ALICE, channel=CHANNEL, response_url=response_url), form=True)
    await bot.settle()
    [done] = fake_slack.calls_to("files.completeUploadExternal")
    assert done.args["channel_id"] == "D0ALICE"  # the file goes to Alice's DM with the bot
    [upload] = fake_slack.uploads.values()
    exported = json.loads(upload)
    assert any("Fernando" in m["text"] for m in exported["messages"])
    note = fake_slack.calls_to("chat.postEphemeral")[-1].args
    assert note["user"] == ALICE and "DM" in note["text"]

    # In a channel the bot is not a member of, Slack refuses chat.postEphemeral; the slash
    # command's response_url still reaches the user, privately.
    fake_slack.not_in_channels.add("C0ELSEWHERE")
    await bot.post(slash_form("help", user=ALICE, channel="C0ELSEWHERE", response_url=response_url), form=True)
    await bot.settle()
    [via_url] = fake_slack.responses
    assert via_url["response_type"] == "ephemeral" and "/forget" in via_url["text"]


# -- Socket Mode ---------------------------------------------------------------------------


async def test_socket_mode_acks_envelopes_and_answers_once(
    make_core: Any, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test")
    adapter = SlackAdapter(core, bot_token=fake_slack.bot_token, app_token=fake_slack.app_token,
                           api_base=fake_slack.api_base)
    core.register(adapter)
    assert adapter.routes() == []  # no public endpoint in Socket Mode
    running = asyncio.create_task(adapter.run())
    try:
        await fake_slack.wait_for(lambda: fake_slack.socket_count == 1)
        fake_slack.delay.update({"users.info": 1.0, "chat.getPermalink": 1.0, "conversations.open": 1.0})
        dm = channel_message("D0ALICE", ALICE, "The wifi password is hunter2, remember it.")
        envelope = socket_envelope(event_callback(dm))
        fake_slack.send_envelope(envelope)
        await fake_slack.wait_for(lambda: [a for a in fake_slack.acks if a.get("envelope_id") == envelope["envelope_id"]])
        # The ack left only once the message was stored (the slow lookups come after it).
        assert await core.store.messages.find_one({"key": f"slack:D0ALICE:{dm['ts']}"}) is not None
        [reply] = await fake_slack.wait_for(fake_slack.posts)
        assert reply.args["channel"] == "D0ALICE" and reply.args["thread_ts"] == dm["ts"]

        # Slack redelivers the same event (retry_attempt 1): acked, nothing done twice.
        retry = socket_envelope(envelope["payload"], retry_attempt=1)
        fake_slack.send_envelope(retry)
        await fake_slack.wait_for(lambda: [a for a in fake_slack.acks if a.get("envelope_id") == retry["envelope_id"]])
        await asyncio.sleep(1.0)
        assert len(fake_slack.posts()) == 1

        # Slash commands come through the socket too. This one is typed in a D... channel: only
        # after the store does conversations.open tell it is the DM with the bot, in time for
        # the command to read Alice's DM memory and answer there rather than ephemerally.
        form = dict(x.split("=", 1) for x in slash_form("memory", user=ALICE, channel="D0ALICE",
                                                       response_url=f"{fake_slack.url}/response/3").split("&"))
        from urllib.parse import unquote_plus

        command = socket_envelope({k: unquote_plus(v) for k, v in form.items()}, kind="slash_commands")
        fake_slack.send_envelope(command)
        await fake_slack.wait_for(lambda: [a for a in fake_slack.acks if a.get("envelope_id") == command["envelope_id"]])
        assert await core.store.messages.count_documents({"is_command": True}) == 1  # stored before the ack
        await fake_slack.wait_for(lambda: len(fake_slack.posts()) == 2)
        memory = fake_slack.posts()[1].args
        assert memory["channel"] == "D0ALICE" and "hunter2" in memory["text"]
        assert fake_slack.calls_to("chat.postEphemeral") == []
    finally:
        await adapter.stop()
        await asyncio.wait_for(running, 10)
    assert fake_slack.socket_count == 0  # the socket is closed on stop


async def test_refused_tokens_stop_with_a_clear_message(make_core: Any, fake_slack: FakeSlack) -> None:
    from core.errors import FatalPlatformError

    core = await make_core()
    wrong_bot = SlackAdapter(core, bot_token="xoxb-revoked", signing_secret=SECRET, api_base=fake_slack.api_base)
    with pytest.raises(FatalPlatformError, match="SLACK_BOT_TOKEN"):
        await asyncio.wait_for(wrong_bot.run(), 10)
    wrong_app = SlackAdapter(core, bot_token=fake_slack.bot_token, app_token="xapp-wrong",
                             api_base=fake_slack.api_base)
    with pytest.raises(FatalPlatformError, match="SLACK_APP_TOKEN"):
        await asyncio.wait_for(wrong_app.run(), 10)


# -- black box: `mnemo run` ------------------------------------------------------------------


def _post_sync(url: str, body: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _wait_sync(predicate: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"mnemo exited early with {proc.returncode}")
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_mnemo_run_answers_slack_events_in_threads(
    base_env: dict[str, str], fake_llm: FakeLLM, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **base_env,
        **fake_llm.env(),
        "SLACK_BOT_TOKEN": fake_slack.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_BASE": fake_slack.api_base,
        "MNEMO_HTTP_PORT": str(port),
    }
    mnemo = Path(sys.executable).with_name("mnemo")
    command = [str(mnemo), "run"] if mnemo.exists() else [sys.executable, "-m", "bot.cli", "run"]
    log_path = tmp_path / "mnemo.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=log_file, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_sync(lambda: _healthy(base), 180, proc)

        def send(event: dict[str, Any], secret: str = SECRET, **headers: str) -> int:
            body = json.dumps(event_callback(event))
            return _post_sync(f"{base}/slack/events", body,
                              {"Content-Type": "application/json", **sign(secret, body), **headers})

        fact = channel_message(CHANNEL, ALICE, "The quarterly offsite is in Lisbon on May 14th.")
        assert send(fact) == 200
        assert send(channel_message(CHANNEL, ALICE, "forged"), secret="nope") == 401
        question = channel_message(CHANNEL, BOB, f"{MENTION} where is the quarterly offsite?")
        assert send(question) == 200
        assert send(app_mention(question)) == 200
        assert send(app_mention(question), **{"X-Slack-Retry-Num": "1"}) == 200
        [post] = _wait_sync(fake_slack.posts, 120, proc)
        time.sleep(1.5)  # a second (duplicate) reply would have arrived by now
        assert len(fake_slack.posts()) == 1
        assert post.args["thread_ts"] == question["ts"]
        assert "Lisbon" in post.args["text"]
        assert footnote_links(post.args["text"]) == [fake_slack.permalink(CHANNEL, fact["ts"])]

        dm = channel_message("D0BOB", BOB, "what do you know about the offsite?")
        assert send(dm) == 200
        _wait_sync(lambda: len(fake_slack.posts()) == 2, 60, proc)
        reply = fake_slack.posts()[1]
        assert reply.args["channel"] == "D0BOB" and reply.args["thread_ts"] == dm["ts"]
        assert "Lisbon" not in reply.args["text"]  # the channel's memory stays in the channel
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        print(log_path.read_text())  # shown by pytest when the test fails
    logs = log_path.read_text()
    assert proc.returncode == 0, logs
    assert "Slack: signed in as bot user" in logs
    assert "Lisbon" not in logs and "offsite" not in logs  # no message content in INFO logs


def test_manifest_grants_what_the_adapter_uses() -> None:
    import yaml

    manifest = yaml.safe_load((REPO / "deploy" / "slack-manifest.yaml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # every Web API method the adapter calls, by the scope Slack requires for it
    assert {"chat:write", "users:read", "files:read", "files:write", "im:write", "commands",
            "app_mentions:read", "channels:history", "groups:history", "im:history"} <= scopes
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.channels", "message.groups", "message.im"} <= events
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/mnemo"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True  # people can DM it


def test_a_slash_command_adopted_after_a_crash_is_answered_like_the_original(
    base_env: dict[str, str], fake_llm: FakeLLM, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """Issue 14 defect 8: the process answering `/mnemo ask` is SIGKILLed mid-answer; the next
    start answers it as a slash command (public, not threaded under its trigger id, saying
    what it answers), because the message kept its reply context."""
    port = free_port()
    env = {**base_env, **fake_llm.env(), "SLACK_BOT_TOKEN": fake_slack.bot_token, "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_API_BASE": fake_slack.api_base, "MNEMO_HTTP_PORT": str(port)}
    command = [sys.executable, "-m", "bot.cli", "run"]
    base = f"http://127.0.0.1:{port}"


    log_path = tmp_path / "mnemo.log"
    with log_path.open("w") as log_file:
        fake_llm.hang = True
        first = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_sync(lambda: _healthy(base), 180, first)  # type: ignore[arg-type]
            body = slash_form("ask what is the capital of Portugal?", user=BOB, channel=CHANNEL,
                              response_url=f"{fake_slack.url}/response/9")
            assert _post_sync(f"{base}/slack/events", body,
                              {"Content-Type": "application/x-www-form-urlencoded", **sign(SECRET, body)}) == 200
            _wait_sync(fake_llm.answer_requests, 60, first)  # type: ignore[arg-type]
        finally:
            first.kill()
            first.wait()
        fake_llm.hang = False
        assert not fake_slack.posts()
        second = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            [answer] = _wait_sync(fake_slack.posts, 180, second)  # type: ignore[arg-type]
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(60)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()
    print(log_path.read_text())  # shown by pytest when the test fails
    assert answer.args["channel"] == CHANNEL and not answer.args.get("thread_ts")
    assert answer.args["text"].startswith(f"<@{BOB}> asked: what is the capital of Portugal?")


def _healthy(base: str) -> bool:
    """Whether `mnemo run` at `base` answers /healthz with 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
