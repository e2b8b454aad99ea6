"""DiscordChatExporter's JSON (`guild`, `channel`, `messages`) -> `core.Message`s, mapped as
the live adapter maps gateway messages. No SDK here: importing this does not load discord.py.

One file per channel or thread; PATH is such a file or a folder of them. The exporter writes a
thread's parent channel as its `categoryId` (its schema predates threads). Threads follow the
contract: a public thread keeps its parent channel's conversation (thread_id = the thread), a
private thread is its own conversation and scope. Direct messages (guild id 0) are DMs of their
author. Links are jump URLs, which name the thread itself for messages in a thread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.history import ExportError, History, field_of, file_attachment, local_file, media_kind, read_json
from core.models import Attachment, Message

PLATFORM = "discord"
_DIRECT = {"DirectTextChat", "DirectGroupTextChat"}
_PUBLIC_THREADS = {"GuildPublicThread", "GuildNewsThread"}
_PRIVATE_THREADS = {"GuildPrivateThread"}
_CHANNELS = {"GuildTextChat", "GuildNews", "GuildVoiceChat", "GuildStageVoice", "GuildForum", "GuildDirectory"}
_SAID = {"Default", "Reply"}  # everything else is a system notice (joins, pins, calls, renames)


def export_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json" and p.is_file())
        if not files:
            raise ExportError(str(path), "", "no .json files in this folder (not a DiscordChatExporter JSON export)")
        return files
    if not path.is_file():
        raise ExportError(str(path), "", "no such file or folder")
    return [path]


def parse_export(path: Path) -> History:
    history = History()
    for file in export_files(path):
        history.extend(parse_file(file))
    return history


def parse_file(path: Path) -> History:
    file = str(path)
    root = read_json(path, file)
    if not isinstance(root, dict) or not all(k in root for k in ("guild", "channel", "messages")):
        raise ExportError(file, "", "not a DiscordChatExporter JSON export (no 'guild', 'channel' and 'messages'); "
                          "export with --format Json")
    guild_id = str(field_of(field_of(root, "guild", dict, file, ""), "id", (str, int), file, "guild"))
    channel = field_of(root, "channel", dict, file, "")
    channel_id = str(field_of(channel, "id", (str, int), file, "channel"))
    kind = field_of(channel, "type", str, file, "channel")
    is_dm = kind in _DIRECT or guild_id == "0"
    thread_id: str | None = None
    conversation_id = channel_id
    if kind in _PUBLIC_THREADS:
        conversation_id = str(field_of(channel, "categoryId", (str, int), file, "channel"))  # the parent channel
        thread_id = channel_id
    elif kind in _PRIVATE_THREADS:
        thread_id = channel_id
    elif kind not in _CHANNELS | _DIRECT:
        raise ExportError(file, "channel.type", f"unknown channel type {kind!r}")
    name = channel.get("name") if isinstance(channel.get("name"), str) else conversation_id
    title = None if is_dm else f"#{channel.get('category') if kind in _PUBLIC_THREADS else name}"
    history = History()
    for i, raw in enumerate(field_of(root, "messages", list, file, "")):
        where = f"messages[{i}]"
        message_id = str(field_of(raw, "id", (str, int), file, where))
        message_type = field_of(raw, "type", str, file, where)
        author = field_of(raw, "author", dict, file, where)
        ts = _time(field_of(raw, "timestamp", str, file, where), file, f"{where}.timestamp")
        if message_type not in _SAID:
            history.skipped["join" if message_type == "GuildMemberJoin" else "system message"] += 1
            continue
        if author.get("isBot"):
            history.skipped["bot message"] += 1
            continue
        content = field_of(raw, "content", str, file, where)
        attachments = _attachments(raw, path.parent, file, where, history)
        if not content.strip() and not attachments:
            history.skipped["no text or readable media"] += 1
            continue
        author_id = str(field_of(author, "id", (str, int), file, f"{where}.author"))
        author_name = next((v for v in (author.get("nickname"), author.get("name"))
                            if isinstance(v, str) and v.strip()), author_id)
        history.messages.append(Message(
            platform=PLATFORM,
            conversation_id=conversation_id,
            message_id=message_id,
            author_id=author_id,
            author_name=author_name,
            text=content.strip(),
            is_dm=is_dm,
            ts=ts,
            thread_id=thread_id,
            link=f"https://discord.com/channels/{'@me' if is_dm else guild_id}/{channel_id}/{message_id}",
            attachments=attachments,
            conversation_title=title,
        ))
    return history


def _time(value: str, file: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(file, where, f"not a time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _attachments(raw: dict[str, Any], root: Path, file: str, where: str, history: History) -> list[Attachment]:
    found: list[Attachment] = []
    items = raw.get("attachments") or []
    if not isinstance(items, list):
        raise ExportError(file, f"{where}.attachments", "expected a list")
    for item in items:
        if not isinstance(item, dict):
            raise ExportError(file, f"{where}.attachments", "expected attachment objects")
        filename = str(item.get("fileName") or "attachment")
        # With --media the exporter writes a path relative to the JSON file; without, a CDN URL.
        path = local_file(root, str(item.get("url") or ""))
        if path is None:
            history.missing_media.append(f"message {raw.get('id')}: {filename}")
            continue
        kind = media_kind(filename, None)
        if filename.startswith("voice-message") and kind == "audio":
            kind = "voice"  # Discord's own name for a recorded voice message
        found.append(file_attachment(path, kind, None))
    return found
