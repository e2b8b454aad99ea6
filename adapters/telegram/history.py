"""Telegram Desktop's JSON export (`result.json`) -> `core.Message`s, as the Bot API would
have delivered them live. No SDK here: importing this module does not load aiogram.

An export is one chat (`name`, `type`, `id`, `messages`) or a whole account (`chats.list`,
`left_chats.list`). Chat ids become what the Bot API calls them: supergroups and channels
`-100<id>`, basic groups `-<id>`, personal chats the user id. Only supergroup and channel
message ids are the chat's own; in basic groups and private chats Telegram numbers messages
per account, so there the exporter's ids are not the ones a bot saw (no live twin to match).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.history import ExportError, History, field_of, file_attachment, local_file, media_kind, read_json
from core.models import Attachment, AttachmentKind, Message

PLATFORM = "telegram"
_DM_TYPES = {"personal_chat", "bot_chat", "saved_messages"}
_BASIC_GROUP_TYPES = {"private_group"}
_CHANNEL_TYPES = {"private_supergroup", "public_supergroup", "private_channel", "public_channel"}
# media_type -> what the live adapter makes of it (a round video message is someone speaking).
_MEDIA: dict[str, tuple[AttachmentKind, str | None]] = {
    "voice_message": ("voice", "audio/ogg"),
    "video_message": ("voice", "video/mp4"),
    "audio_file": ("audio", None),
}
_UNREAD_MEDIA = {"video_file", "animation", "sticker"}  # the live adapter reads none of these


def find_export(path: Path) -> Path:
    """The result.json to read: PATH itself, or the one in the folder PATH."""
    if path.is_dir():
        candidate = path / "result.json"
        if not candidate.is_file():
            raise ExportError(str(path), "", "no result.json in this folder (not a Telegram Desktop JSON export)")
        return candidate
    if not path.is_file():
        raise ExportError(str(path), "", "no such file")
    return path


def parse_export(path: Path) -> History:
    file = find_export(path)
    shown = str(file)
    root = read_json(file, shown)
    if not isinstance(root, dict):
        raise ExportError(shown, "", "not a Telegram Desktop export (the top level is not an object)")
    history = History()
    if "messages" in root:
        history.extend(parse_chat(root, file.parent, shown, ""))
        return history
    chats = root.get("chats")
    if not isinstance(chats, dict) or not isinstance(chats.get("list"), list):
        raise ExportError(shown, "", "not a Telegram Desktop export (no 'messages' and no 'chats.list'); "
                          "export as JSON (machine-readable), not HTML")
    for section in ("chats", "left_chats"):
        listed = root.get(section)
        if not isinstance(listed, dict):
            continue
        for i, chat in enumerate(field_of(listed, "list", list, shown, section)):
            history.extend(parse_chat(chat, file.parent, shown, f"{section}.list[{i}]"))
    return history


def bot_api_chat_id(chat_type: str, export_id: int) -> str:
    if export_id < 0:  # already in Bot API form (some tools write it so)
        return str(export_id)
    if chat_type in _CHANNEL_TYPES:
        return f"-100{export_id}"
    if chat_type in _BASIC_GROUP_TYPES:
        return f"-{export_id}"
    return str(export_id)


def parse_chat(chat: Any, root: Path, file: str, where: str) -> History:
    chat_type = field_of(chat, "type", str, file, where)
    if chat_type not in _DM_TYPES | _BASIC_GROUP_TYPES | _CHANNEL_TYPES:
        raise ExportError(file, f"{where}.type" if where else "type", f"unknown chat type {chat_type!r}")
    export_id = field_of(chat, "id", int, file, where)
    chat_id = bot_api_chat_id(chat_type, export_id)
    title = chat.get("name") if isinstance(chat.get("name"), str) else None
    messages = field_of(chat, "messages", list, file, where)
    history = History()
    bot_peer = f"user{export_id}" if chat_type == "bot_chat" else None
    for j, raw in enumerate(messages):
        spot = f"{where}.messages[{j}]" if where else f"messages[{j}]"
        message = _message(raw, chat_type, chat_id, title, root, file, spot, bot_peer, history)
        if message is not None:
            history.messages.append(message)
    return history


def _message(raw: Any, chat_type: str, chat_id: str, title: str | None, root: Path, file: str, where: str,
             bot_peer: str | None, history: History) -> Message | None:
    message_id = field_of(raw, "id", int, file, where)
    kind = field_of(raw, "type", str, file, where)
    if kind != "message":
        history.skipped["service message" if kind == "service" else f"{kind} entry"] += 1
        return None
    ts = _time(raw, file, where)
    from_id = raw.get("from_id")
    if from_id is not None and not isinstance(from_id, str):
        raise ExportError(file, f"{where}.from_id", f"expected text like 'user123', found {type(from_id).__name__}")
    if bot_peer is not None and from_id == bot_peer:
        history.skipped["bot message"] += 1
        return None
    text = message_text(raw, file, where)
    attachments = _attachments(raw, root, history)
    if not text.strip() and not attachments:
        history.skipped["no text or readable media"] += 1
        return None
    author_id = _author_id(from_id, chat_id, file, where)
    if bot_peer is not None:
        chat_id = author_id  # a bot sees its private chat with a person under that person's id
    author_name = raw.get("from") if isinstance(raw.get("from"), str) and raw.get("from") else None
    return Message(
        platform=PLATFORM,
        conversation_id=chat_id,
        message_id=str(message_id),
        author_id=author_id,
        author_name=author_name or ("Deleted Account" if from_id else title or author_id),
        text=text,
        is_dm=chat_type in _DM_TYPES,
        ts=ts,
        # What the live adapter links: t.me/c/... for supergroups and channels only.
        link=f"https://t.me/c/{chat_id[4:]}/{message_id}" if chat_id.startswith("-100") else None,
        attachments=attachments,
        conversation_title=None if chat_type in _DM_TYPES else title,
    )


def _time(raw: dict[str, Any], file: str, where: str) -> datetime:
    unix = raw.get("date_unixtime")
    if unix is not None:
        try:
            return datetime.fromtimestamp(int(unix), UTC)
        except (TypeError, ValueError, OverflowError):
            raise ExportError(file, f"{where}.date_unixtime", f"not a time: {unix!r}") from None
    date = field_of(raw, "date", str, file, where)
    try:
        moment = datetime.fromisoformat(date)
    except ValueError:
        raise ExportError(file, f"{where}.date", f"not a time: {date!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # old exports: the exporter's clock


def _author_id(from_id: str | None, chat_id: str, file: str, where: str) -> str:
    """`user123` -> "123"; a channel or group posting as itself -> its Bot API chat id."""
    if from_id is None:
        return chat_id  # a channel post without a signature: the channel said it
    for prefix, bot_api in (("user", "{}"), ("channel", "-100{}"), ("chat", "-{}"), ("group", "-{}")):
        if from_id.startswith(prefix) and from_id[len(prefix):].isdigit():
            return bot_api.format(from_id[len(prefix):])
    raise ExportError(file, f"{where}.from_id", f"not a Telegram peer id: {from_id!r}")


def message_text(raw: dict[str, Any], file: str, where: str) -> str:
    """The plain text: `text_entities` when present (each piece's text), else `text`, which
    is a string or a list of strings and entity objects."""
    pieces = raw.get("text_entities")
    if not isinstance(pieces, list):
        pieces = raw.get("text", "")
        if isinstance(pieces, str):
            return pieces
        if not isinstance(pieces, list):
            raise ExportError(file, f"{where}.text", f"expected text or a list, found {type(pieces).__name__}")
    parts: list[str] = []
    for k, piece in enumerate(pieces):
        if isinstance(piece, str):
            parts.append(piece)
        elif isinstance(piece, dict) and isinstance(piece.get("text", ""), str):
            parts.append(piece.get("text", ""))
        else:
            raise ExportError(file, f"{where}.text[{k}]", "expected text or an entity object")
    return "".join(parts)


def _attachments(raw: dict[str, Any], root: Path, history: History) -> list[Attachment]:
    found: list[Attachment] = []

    def take(relative: Any, kind: AttachmentKind, mime: str | None) -> None:
        path = local_file(root, relative) if isinstance(relative, str) else None
        if path is None:
            history.missing_media.append(f"message {raw.get('id')}: {relative}")
        else:
            found.append(file_attachment(path, kind, mime))

    if "photo" in raw:
        take(raw["photo"], "image", "image/jpeg")
    if "file" in raw:
        media_type = raw.get("media_type")
        mime = raw.get("mime_type") if isinstance(raw.get("mime_type"), str) else None
        if media_type in _UNREAD_MEDIA:
            return found
        if isinstance(media_type, str) and media_type in _MEDIA:
            kind, default_mime = _MEDIA[media_type]
            take(raw["file"], kind, mime or default_mime)
        else:  # a document: read when it is an image or a sound, referenced otherwise
            file_name = raw.get("file_name")
            name = file_name if isinstance(file_name, str) else str(raw["file"])
            take(raw["file"], media_kind(name, mime), mime)
    return found
