"""`mnemo import` as a black box: export-shaped files written here, the real CLI in a
subprocess on the real stores, then `mnemo run` against the loopback Telegram answering from
what was imported, with footnotes linking the original messages. Also: importing twice, an
import killed halfway then rerun, and malformed exports refused with one clear line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont
from pymongo import MongoClient

from tests.conftest import REPO
from tests.fakes.llm import FakeLLM
from tests.fakes.telegram import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    FakeTelegram,
    mention_entity,
    private_chat,
    supergroup,
    user,
)
from tests.test_telegram import free_port, replies_to, start_mnemo, stop_mnemo, visible, wait_sync

ALICE = user(111, "Alice", "alice")
BOB = user(222, "Bob", "bob")
GROUP = supergroup(-1001234567890, "Book club")
MENTION = f"@{BOT_USERNAME}"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
TRANSCRIPT = "the treasurer of the club this year is Priya Raman"


def mnemo_import(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "import", *args], env=env, cwd=str(REPO), text=True,
                          capture_output=True, timeout=timeout, check=False)


def import_env(base_env: dict[str, str], fake_llm: FakeLLM, model: bool = True) -> dict[str, str]:
    # Embeddings and transcription from the loopback model server: the same embedder for the
    # import and for `mnemo run`, and subprocesses that start in seconds.
    env = {**base_env, **fake_llm.env(), "MNEMO_EMBEDDING_MODEL": "openai/fake-embedding",
           "MNEMO_STT_MODEL": "whisper-1"}
    if not model:
        env.pop("MNEMO_MODEL")  # no chat model: nothing is learned
    return env


def messages_of(mongo_uri: str, db_name: str) -> Any:
    return MongoClient(mongo_uri)[db_name]["messages"]


def tg_message(message_id: int, sender: dict[str, Any], text: Any, at: int, **extra: Any) -> dict[str, Any]:
    entities = text if isinstance(text, list) else [{"type": "plain", "text": text}]
    return {"id": message_id, "type": "message", "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)),
            "date_unixtime": str(at), "from": sender["first_name"], "from_id": f"user{sender['id']}",
            "text": text, "text_entities": [e if isinstance(e, dict) else {"type": "plain", "text": e}
                                            for e in entities], **extra}


def write_telegram_export(folder: Path) -> None:
    """A full account export (Alice's): the book club supergroup and her chat with the bot."""
    (folder / "voice_messages").mkdir(parents=True)
    (folder / "photos").mkdir()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
                    "-c:a", "libopus", str(folder / "voice_messages" / "audio_5.ogg")], check=True)
    note = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(note).text((30, 70), "Locker code 4417", fill="black", font=ImageFont.truetype(FONT, 48))
    note.save(folder / "photos" / "photo_6.jpg")
    (folder / "photos" / "photo_9.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    at = 1714557600
    club = [
        {"id": 1, "type": "service", "date": "2024-05-01T10:00:00", "date_unixtime": str(at), "actor": "Alice",
         "actor_id": "user111", "action": "create_group", "title": "Book club", "text": "", "text_entities": []},
        tg_message(2, ALICE, ["The next book is ", {"type": "bold", "text": "Süßes Gift"},
                              " by Ilse Weber 📚, see ", {"type": "link", "text": "https://example.org/gift"}], at + 60),
        tg_message(3, BOB, "We meet at Café Olé on Friday at 19:00", at + 120, reply_to_message_id=2,
                   edited="2024-05-01T10:05:00", edited_unixtime=str(at + 300)),
        tg_message(4, BOB, "", at + 180, photo="photos/photo_4.jpg", width=800, height=600),  # not exported
        tg_message(5, BOB, "", at + 240, file="voice_messages/audio_5.ogg", media_type="voice_message",
                   mime_type="audio/ogg", duration_seconds=2),
        tg_message(6, ALICE, "", at + 300, photo="photos/photo_6.jpg", width=900, height=200),
        tg_message(7, ALICE, "/settings", at + 360),
        tg_message(8, BOB, "agenda attached", at + 420, file="(File not included. Change data exporting settings "
                   "to download.)", file_name="agenda.pdf", mime_type="application/pdf"),
        tg_message(9, BOB, "the whiteboard from Monday", at + 480, photo="photos/photo_9.jpg"),  # unreadable
    ]
    mnemo = {"first_name": "Mnemo", "id": BOT_ID}
    dm = [tg_message(20, ALICE, "My gym locker PIN is 9021", at + 500),
          tg_message(21, mnemo, "Noted.", at + 501)]
    export = {"about": "Here is the data you requested.",
              "personal_information": {"user_id": 111, "first_name": "Alice"},
              "chats": {"about": "This page lists all chats from this export.", "list": [
                  {"name": "Book club", "type": "private_supergroup", "id": 1234567890, "messages": club},
                  {"name": "Mnemo", "type": "bot_chat", "id": BOT_ID, "messages": dm},
              ]}}
    (folder / "result.json").write_text(json.dumps(export, ensure_ascii=False, indent=1), encoding="utf-8")


def test_telegram_import_is_answered_live_with_links_and_is_idempotent(
    tmp_path: Path, base_env: dict[str, str], fake_llm: FakeLLM, mongo_uri: str, db_name: str
) -> None:
    export = tmp_path / "Telegram Export"
    write_telegram_export(export)
    fake_llm.transcript = TRANSCRIPT
    env = import_env(base_env, fake_llm)

    first = mnemo_import(env, "telegram", str(export))
    assert first.returncode == 0, first.stderr
    assert "8 messages imported, 0 already imported" in first.stderr, first.stderr
    assert "1 service message" in first.stderr and "1 bot message" in first.stderr
    assert "media named but not in the export: 2" in first.stderr
    assert "kept but not remembered: 1 /commands" in first.stderr
    assert "learned from it in 2 model requests" in first.stderr, first.stderr  # the club, and Alice's DM
    assert re.search(r"^learning: \d+/8 messages read \(\d+%\)", first.stderr, re.MULTILINE), first.stderr
    learning = [r for r in fake_llm.chat_requests() if r.get("tools")]
    assert any("Süßes Gift" in json.dumps(r["messages"], ensure_ascii=False) for r in learning)
    assert "failed: 1" in first.stderr and "message 9 (photo_9.jpg):" in first.stderr, first.stderr
    stored = messages_of(mongo_uri, db_name)
    assert stored.count_documents({}) == 8
    assert stored.find_one({"key": "telegram:-1001234567890:9"})["remembered"]  # its caption is
    edited = stored.find_one({"key": "telegram:-1001234567890:3"})
    assert edited["text"] == "We meet at Café Olé on Friday at 19:00" and edited["scope"] == "group:telegram:-1001234567890"
    assert stored.find_one({"key": "telegram:-1001234567890:2"})["text"] == (
        "The next book is Süßes Gift by Ilse Weber 📚, see https://example.org/gift")
    command = stored.find_one({"key": "telegram:-1001234567890:7"})
    assert command["kind"] == "command" and not command["remembered"]
    assert stored.find_one({"key": "telegram:111:20"})["scope"] == "dm:telegram:111"

    again = mnemo_import(env, "telegram", str(export / "result.json"))
    assert again.returncode == 0, again.stderr
    assert "0 messages imported, 8 already imported" in again.stderr, again.stderr
    assert stored.count_documents({}) == 8

    telegram = FakeTelegram().start()
    proc = start_mnemo({**env, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": telegram.api_base,
                        "MNEMO_HTTP_PORT": str(free_port())})
    try:
        def ask(chat: dict[str, Any], who: dict[str, Any], text: str) -> str:
            entities = [mention_entity(text, MENTION)] if MENTION in text else None
            update = telegram.push(telegram.message(chat, who, text, entities=entities))
            [answer] = wait_sync(lambda: replies_to(telegram, update), proc, 120, f"an answer to {text!r}")
            return visible(answer) + "\n" + answer.params["text"]  # what people read, and the HTML with links

        book = ask(GROUP, BOB, f"{MENTION} which book is next?")
        assert "Süßes Gift" in book and 'href="https://t.me/c/1234567890/2"' in book, book
        treasurer = ask(GROUP, BOB, f"{MENTION} who is the treasurer of the club?")
        assert "Priya" in treasurer and 'href="https://t.me/c/1234567890/5"' in treasurer, treasurer
        locker = ask(GROUP, BOB, f"{MENTION} what is the locker code?")
        assert "4417" in locker and 'href="https://t.me/c/1234567890/6"' in locker, locker
        assert "9021" not in locker  # Alice's DM stays in her DMs
        pin = ask(private_chat(ALICE), ALICE, "what is my gym locker PIN?")
        assert "9021" in pin, pin
    finally:
        code, err = stop_mnemo(proc)
        telegram.stop()
    assert code == 0, err[-3000:]


def write_big_export(folder: Path, count: int) -> None:
    folder.mkdir()
    people = [user(1000 + i, f"Member{i}") for i in range(20)]
    messages = [tg_message(i + 1, people[i % 20], f"note {i}: the build of module {i % 97} passed on runner {i % 13}",
                           1714557600 + i) for i in range(count)]
    (folder / "result.json").write_text(json.dumps({"name": "Builds", "type": "public_supergroup", "id": 555,
                                                    "messages": messages}))


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_interrupted_import_finishes_on_rerun_with_one_copy_of_each(
    tmp_path: Path, base_env: dict[str, str], fake_llm: FakeLLM, mongo_uri: str, db_name: str, data_dir: Path,
    how: signal.Signals,
) -> None:
    total = 2000
    write_big_export(tmp_path / "export", total)
    env = import_env(base_env, fake_llm, model=False)
    stored = messages_of(mongo_uri, db_name)
    # The model server answers the first batch's embeddings and holds the rest: the import is
    # interrupted mid-way, whatever the machine's speed, with one batch stored and indexed.
    fake_llm.embeddings_before_hold = 1
    # As from a terminal, the import gets SIGINT's default. A suite started in the background of a
    # script (as CI may be) has SIGINT ignored, and an ignored signal stays ignored across exec; a
    # handled one is reset to the default there.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "import", "telegram", str(tmp_path / "export")],
                                env=env, cwd=str(REPO), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        deadline = time.monotonic() + 180
        # Stored one batch and waiting on the next one's embeddings: interrupted right there.
        while ((stored.count_documents({}) == 0 or fake_llm.embedding_requests < 2)
               and proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        assert proc.poll() is None, "the import finished before it could be interrupted"
        assert fake_llm.embedding_requests >= 2, "the import never reached its second batch"
        time.sleep(0.5)  # the first batch's index write (a thread) is done by then
        proc.send_signal(how)
        _, err = proc.communicate(timeout=60)
    finally:
        fake_llm.embeddings_before_hold = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    halfway = stored.count_documents({})
    assert 0 < halfway < total and proc.returncode != 0, (halfway, proc.returncode)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "mnemo import: interrupted; run the same command again" in err, err

    rerun = mnemo_import(env, "telegram", str(tmp_path / "export"))
    assert rerun.returncode == 0, rerun.stderr
    assert stored.count_documents({}) == total
    assert len(stored.distinct("key")) == total
    assert stored.count_documents({"remembered": True}) == total

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))
    [collection] = chroma.list_collections()
    assert collection.count() == total  # every memory indexed exactly once, under its stored id
    assert set(collection.get(limit=total, include=[])["ids"]) == set(stored.distinct("_id"))


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_malformed_exports_are_refused_with_one_line_naming_file_and_place(
    tmp_path: Path, base_env: dict[str, str], mongo_uri: str, db_name: str
) -> None:
    truncated = tmp_path / "truncated"
    write_big_export(truncated, 50)
    data = (truncated / "result.json").read_text()
    (truncated / "result.json").write_text(data[: len(data) // 2])
    line = one_line_refusal(mnemo_import(base_env, "telegram", str(truncated)))
    assert str(truncated / "result.json") in line and "line 1, column" in line and "truncated" in line, line

    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "type": "private_supergroup", "id": 1, "messages": [\n'
                      '{"id": 1, "type": "message", "date": "2024-01-01T00:00:00", "text": "ok"},\n'
                      '{"id": 2, "type": "message" "date": "2024-01-01T00:00:01", "text": "bad"}]}')
    line = one_line_refusal(mnemo_import(base_env, "telegram", str(broken)))
    assert str(broken) in line and "line 3, column" in line, line

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"name": "x", "type": "secret_chat", "id": 1, "messages": []}))
    line = one_line_refusal(mnemo_import(base_env, "telegram", str(unknown)))
    assert str(unknown) in line and "unknown chat type 'secret_chat'" in line, line

    no_id = tmp_path / "no_id.json"
    no_id.write_text(json.dumps({"name": "x", "type": "public_supergroup", "id": 1,
                                 "messages": [{"type": "message", "date": "2024-01-01T00:00:00", "text": "hi"}]}))
    line = one_line_refusal(mnemo_import(base_env, "telegram", str(no_id)))
    assert line.endswith("no_id.json: messages[0]: no 'id'"), line

    not_slack = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_slack, "w") as archive:
        archive.writestr("holiday/beach.json", "[]")
    line = one_line_refusal(mnemo_import(base_env, "slack", str(not_slack)))
    assert str(not_slack) in line and "not a Slack export" in line, line

    not_zip = tmp_path / "export.zip"
    not_zip.write_bytes(b"PK\x03\x04 this is not really a zip")
    line = one_line_refusal(mnemo_import(base_env, "slack", str(not_zip)))
    assert str(not_zip) in line, line

    discord = tmp_path / "general.json"
    discord.write_text(json.dumps({"guild": {"id": "1", "name": "g"}, "channel": {"id": "2", "type": "GuildTextChat"},
                                   "messages": [{"id": "3", "type": "Default", "timestamp": "yesterday",
                                                 "content": "hi", "author": {"id": "4", "name": "a"}}]}))
    line = one_line_refusal(mnemo_import(base_env, "discord", str(discord)))
    assert line.endswith("general.json: messages[0].timestamp: not a time: 'yesterday'"), line
    # Nothing was written by any of the refused imports.
    assert messages_of(mongo_uri, db_name).count_documents({}) == 0
