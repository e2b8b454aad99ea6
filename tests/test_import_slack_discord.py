"""`mnemo import slack|discord` as a black box: export-shaped files written here (a Slack
workspace zip, DiscordChatExporter JSON files), the real CLI in a subprocess, then `mnemo run`
against the loopback platform answering from the import with footnotes linking the originals
(Slack permalinks, Discord jump URLs). Threads, DMs, edits, joins, bots, unicode included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.fakes.discord import ALICE as D_ALICE
from tests.fakes.discord import BOB as D_BOB
from tests.fakes.discord import CHANNEL_ID, GUILD_ID, THREAD_ID, FakeDiscord, dm_channel_id
from tests.fakes.llm import FakeLLM
from tests.fakes.slack import BOT_USER_ID, FakeSlack, channel_message, event_callback, sign
from tests.test_discord import _free_port, _mnemo_run, jump_url
from tests.test_import import import_env, messages_of, mnemo_import
from tests.test_slack import ALICE, BOB, CHANNEL, MENTION, SECRET, _post_sync, _wait_sync, footnote_links, free_port

# -- Slack ----------------------------------------------------------------------------------

T0 = 1714557600
VENUE_TS, ASK_TS, BUS_TS, EDIT_TS, DM_TS = (f"{T0 + i * 60}.00{i}100" for i in range(1, 6))


def write_slack_zip(path: Path) -> None:
    day = [
        {"type": "message", "subtype": "channel_join", "user": BOB, "text": f"<@{BOB}> has joined the channel",
         "ts": f"{T0}.000100"},
        {"type": "message", "user": ALICE, "text": "The offsite venue is Quinta da Regaleira in Sintra 🏰 &amp; "
         "lunch is included", "ts": VENUE_TS, "user_profile": {"display_name": "Alice", "real_name": "Alice L."}},
        {"type": "message", "user": BOB, "text": "Who books the bus?", "ts": ASK_TS, "thread_ts": ASK_TS,
         "reply_count": 1, "reply_users": [ALICE]},
        {"type": "message", "user": ALICE, "text": "Carla books the bus for the offsite, 40 seats", "ts": BUS_TS,
         "thread_ts": ASK_TS, "parent_user_id": BOB},
        {"type": "message", "subtype": "bot_message", "bot_id": "B0DEPLOY", "username": "deploybot",
         "text": "Deploy finished", "ts": f"{T0 + 400}.000600"},
        {"type": "message", "user": BOB, "text": "The bus leaves at 8:30 from the office", "ts": EDIT_TS,
         "edited": {"user": BOB, "ts": f"{T0 + 500}.000000"},
         "files": [{"id": "F0AGENDA", "name": "agenda.pdf", "title": "agenda.pdf", "mimetype": "application/pdf",
                    "size": 1234, "url_private": "https://files.slack.com/files-pri/T0-F0AGENDA/agenda.pdf"}]},
    ]
    dm = [{"type": "message", "user": ALICE, "text": "My employee number is 55123", "ts": DM_TS},
          {"type": "message", "user": BOT_USER_ID, "bot_id": "B0MNEMO", "text": "Noted.", "ts": f"{T0 + 700}.000700"}]
    users = [{"id": ALICE, "name": "alice", "real_name": "Alice L.", "profile": {"display_name": "Alice"}},
             {"id": BOB, "name": "bob", "real_name": "Bob", "profile": {"display_name": "Bob", "real_name": "Bob"}}]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("users.json", json.dumps(users))
        archive.writestr("channels.json", json.dumps([{"id": CHANNEL, "name": "general", "members": [ALICE, BOB]}]))
        archive.writestr("dms.json", json.dumps([{"id": "D0ALICE", "members": [ALICE, BOT_USER_ID]}]))
        archive.writestr("integration_logs.json", "[]")
        archive.writestr("general/2024-05-01.json", json.dumps(day, ensure_ascii=False))
        archive.writestr("D0ALICE/2024-05-01.json", json.dumps(dm))


def test_slack_zip_import_is_answered_in_the_channel_with_permalinks(
    tmp_path: Path, base_env: dict[str, str], fake_llm: FakeLLM, mongo_uri: str, db_name: str
) -> None:
    export = tmp_path / "Acme Slack export May 1 2024.zip"
    write_slack_zip(export)
    slack = FakeSlack().start()
    slack.add_user(ALICE, "Alice")
    slack.add_user(BOB, "Bob")
    # The deployment's own Slack configuration (as `mnemo run` reads it).
    env = {**import_env(base_env, fake_llm), "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_BASE": slack.api_base,
           "SLACK_SIGNING_SECRET": SECRET}
    proc = None
    try:
        # No workspace URL given: with a bot token the permalinks come from chat.getPermalink.
        first = mnemo_import(env, "slack", str(export))
        assert first.returncode == 0, first.stderr
        assert "5 messages imported" in first.stderr and "1 join or leave" in first.stderr, first.stderr
        assert "2 bot message" in first.stderr, first.stderr
        stored = messages_of(mongo_uri, db_name)
        bus = stored.find_one({"key": f"slack:{CHANNEL}:{BUS_TS}"})
        assert bus["thread_id"] == ASK_TS and bus["link"] == slack.permalink(CHANNEL, BUS_TS)
        assert stored.find_one({"key": f"slack:{CHANNEL}:{VENUE_TS}"})["text"].endswith("🏰 & lunch is included")
        assert stored.find_one({"key": f"slack:{CHANNEL}:{EDIT_TS}"})["attachments"][0]["filename"] == "agenda.pdf"
        assert stored.find_one({"key": f"slack:D0ALICE:{DM_TS}"})["scope"] == f"dm:slack:{ALICE}"

        again = mnemo_import(env, "slack", str(export), "--workspace-url", "https://acme.slack.com")
        assert again.returncode == 0 and "0 messages imported, 5 already imported" in again.stderr, again.stderr

        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"],
                                env={**env, "MNEMO_HTTP_PORT": str(port)},
                                cwd=str(REPO), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"

        def send(event: dict[str, Any]) -> int:
            body = json.dumps(event_callback(event))
            try:
                return _post_sync(f"{base}/slack/events", body, {"Content-Type": "application/json", **sign(SECRET, body)})
            except OSError:
                return 0

        def ask(channel: str, who: str, text: str) -> str:
            event = channel_message(channel, who, text)
            _wait_sync(lambda: send(event) == 200, 180, proc)
            [post] = _wait_sync(lambda: [p for p in slack.posts() if p.args.get("thread_ts") == event["ts"]], 120, proc)
            return str(post.args["text"])

        venue = ask(CHANNEL, BOB, f"{MENTION} where is the offsite venue?")
        assert "Regaleira" in venue and footnote_links(venue) == [slack.permalink(CHANNEL, VENUE_TS)], venue
        bus_answer = ask(CHANNEL, BOB, f"{MENTION} who books the bus for the offsite?")
        assert "Carla" in bus_answer and slack.permalink(CHANNEL, BUS_TS) in footnote_links(bus_answer), bus_answer
        leak = ask(CHANNEL, BOB, f"{MENTION} what is the employee number of Alice?")
        assert "55123" not in leak  # her DM stays in her DMs
        mine = ask("D0ALICE", ALICE, "what is my employee number?")
        assert "55123" in mine, mine
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        slack.stop()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_slack_folder_import_builds_permalinks_from_the_workspace_url(
    tmp_path: Path, base_env: dict[str, str], fake_llm: FakeLLM, mongo_uri: str, db_name: str
) -> None:
    write_slack_zip(tmp_path / "export.zip")
    with zipfile.ZipFile(tmp_path / "export.zip") as archive:
        archive.extractall(tmp_path / "folder")
    result = mnemo_import(import_env(base_env, fake_llm), "slack", str(tmp_path / "folder"),
                          "--workspace-url", "https://acme.slack.com/")
    assert result.returncode == 0, result.stderr
    stored = messages_of(mongo_uri, db_name)
    link = stored.find_one({"key": f"slack:{CHANNEL}:{BUS_TS}"})["link"]
    assert link == f"https://acme.slack.com/archives/{CHANNEL}/p{BUS_TS.replace('.', '')}?thread_ts={ASK_TS}&cid={CHANNEL}"


# -- Discord --------------------------------------------------------------------------------

PRIVATE_THREAD = 940000000000000001


def dce_file(path: Path, channel: dict[str, Any], messages: list[dict[str, Any]], guild: int = GUILD_ID) -> None:
    guild_info = {"id": str(guild), "name": "Direct Messages" if guild == 0 else "Test Guild", "iconUrl": ""}
    path.write_text(json.dumps({"guild": guild_info, "channel": channel, "dateRange": {"after": None, "before": None},
                                "exportedAt": "2024-06-01T00:00:00+00:00", "messages": messages,
                                "messageCount": len(messages)}, ensure_ascii=False), encoding="utf-8")


def dce_message(message_id: int, author: int, content: str, kind: str = "Default", **extra: Any) -> dict[str, Any]:
    name = "alice" if author == D_ALICE else "bob" if author == D_BOB else "deploybot"
    return {"id": str(message_id), "type": kind, "timestamp": f"2024-05-01T10:{message_id % 60:02d}:00.000+00:00",
            "timestampEdited": None, "callEndedTimestamp": None, "isPinned": False, "content": content,
            "author": {"id": str(author), "name": name, "discriminator": "0000", "nickname": name.title(),
                       "color": None, "isBot": name == "deploybot", "roles": [], "avatarUrl": ""},
            "attachments": [], "embeds": [], "stickers": [], "reactions": [], "mentions": [], "inlineEmojis": [],
            **extra}


def write_discord_export(folder: Path) -> None:
    folder.mkdir()
    text = {"id": str(CHANNEL_ID), "type": "GuildTextChat", "categoryId": "1", "category": "Text Channels",
            "name": "general", "topic": None}
    dce_file(folder / "Test Guild - general.json", text, [
        dce_message(1001, D_BOB, "Joined the server.", "GuildMemberJoin"),
        dce_message(1002, D_ALICE, "The staging database moved to host db-9.internal 🚀",
                    timestampEdited="2024-05-01T10:59:00.000+00:00"),
        dce_message(1003, D_BOB, "Thanks! Is Grafana still on the old host?", "Reply",
                    reference={"type": "Default", "messageId": "1002", "channelId": str(CHANNEL_ID),
                               "guildId": str(GUILD_ID)}),
        dce_message(1004, 1, "Build 512 deployed"),
        dce_message(1005, D_BOB, "diagram attached", attachments=[
            {"id": "77", "url": "Test Guild - general.json_Files/diagram-5A1B.png", "fileName": "diagram.png",
             "fileSizeBytes": 2048}]),
        dce_message(1006, D_ALICE, "Alice pinned a message.", "ChannelPinnedMessage"),
    ])
    thread = {"id": str(THREAD_ID), "type": "GuildPublicThread", "categoryId": str(CHANNEL_ID),
              "category": "general", "name": "offsite planning", "topic": None}
    dce_file(folder / "Test Guild - offsite planning.json", thread,
             [dce_message(2001, D_ALICE, "The offsite hotel is Casa Azul in Lisbon")])
    private = {"id": str(PRIVATE_THREAD), "type": "GuildPrivateThread", "categoryId": str(CHANNEL_ID),
               "category": "general", "name": "pay", "topic": None}
    dce_file(folder / "Test Guild - pay.json", private, [dce_message(3001, D_BOB, "My salary band is L5")])
    dm = {"id": str(dm_channel_id(D_ALICE)), "type": "DirectTextChat", "categoryId": None, "category": None,
          "name": "alice", "topic": None}
    dce_file(folder / "Direct Messages - alice.json", dm,
             [dce_message(4001, D_ALICE, "My passport expires in March 2027")], guild=0)


def test_discord_export_import_is_answered_with_jump_urls_threads_and_dms_in_their_scopes(
    tmp_path: Path, base_env: dict[str, str], fake_llm: FakeLLM, mongo_uri: str, db_name: str
) -> None:
    write_discord_export(tmp_path / "export")
    env = import_env(base_env, fake_llm)
    first = mnemo_import(env, "discord", str(tmp_path / "export"))
    assert first.returncode == 0, first.stderr
    assert "6 messages imported" in first.stderr and "1 bot message" in first.stderr, first.stderr
    assert "1 join" in first.stderr and "1 system message" in first.stderr and "media named but not" in first.stderr
    stored = messages_of(mongo_uri, db_name)
    public = stored.find_one({"key": f"discord:{CHANNEL_ID}:2001"})
    assert public["thread_id"] == str(THREAD_ID) and public["scope"] == f"group:discord:{CHANNEL_ID}"
    private = stored.find_one({"key": f"discord:{PRIVATE_THREAD}:3001"})
    assert private["scope"] == f"group:discord:{PRIVATE_THREAD}"  # its own conversation and scope
    assert mnemo_import(env, "discord", str(tmp_path / "export")).stderr.count("0 messages imported, 6 already") == 1

    fake = FakeDiscord().start()
    proc = _mnemo_run({**env, **fake.env(), "MNEMO_HTTP_PORT": str(_free_port())})
    try:
        fake.wait(lambda: fake.ready or proc.poll() is not None, timeout=120, what="mnemo run to connect")

        def ask(text: str, **where: Any) -> str:
            question = fake.message(text, **where)
            fake.dispatch("MESSAGE_CREATE", question)
            fake.wait(lambda: bool(fake.replies_to(question["id"])), what=f"an answer to {text!r}")
            return str(fake.replies_to(question["id"])[0]["content"])

        hotel = ask("where is the offsite hotel?", mention_bot=True)
        assert "Casa Azul" in hotel and jump_url(THREAD_ID, "2001") in hotel, hotel
        host = ask("which host is the staging database on?", mention_bot=True)
        assert "db-9.internal" in host and jump_url(CHANNEL_ID, "1002") in host, host
        salary = ask("what is the salary band of Bob?", mention_bot=True)
        assert "L5" not in salary  # the private thread is its own scope
        passport = ask("when does my passport expire?", dm=True)
        assert "March 2027" in passport and jump_url(dm_channel_id(D_ALICE), "4001", guild="@me") in passport
    finally:
        proc.terminate()
        try:
            code = proc.wait(60)
        finally:
            fake.stop()
    assert code == 0
