"""What a stored message document means to the pipeline: its remembered text, its memory
index entry, and the Message rebuilt from it after a crash."""

from __future__ import annotations

import re
from typing import Any

from core.answer import to_datetime
from core.media import MediaText
from core.memory.index import MemoryItem
from core.models import Message, Scope

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """Text as it can be stored: lone surrogates (undecodable code points some clients send)
    replaced by U+FFFD, which BSON's UTF-8 cannot hold otherwise."""
    return _SURROGATE.sub("\ufffd", text) if text else text


def memory_text(text: str, media: list[MediaText]) -> str:
    parts = [text.strip()] if text.strip() else []
    parts += [m.text.strip() for m in media if m.text.strip()]
    return "\n".join(parts)


def stored_media(doc: dict[str, Any]) -> list[MediaText]:
    """What was read of the document's attachment, if anything."""
    return [MediaText(doc["media_kind"], doc["media_text"])] if doc.get("media_kind") else []


def memory_item(doc: dict[str, Any], content: str, media: list[MediaText]) -> MemoryItem:
    return MemoryItem(
        memory_id=doc["_id"],
        scope=Scope.parse(doc["scope"]),
        text=content,
        author=doc["author_name"],
        ts=to_datetime(doc["ts"]).timestamp(),
        source_kind=media[0].kind if media else "text",  # a captioned photo is still an image
        conversation_key=doc["conversation_key"],
        author_key=doc["author_key"],
    )


def storable_context(context: dict[str, object]) -> dict[str, Any]:
    """The part of an adapter's `reply_context` that can be stored (plain values: a Slack
    response_url and slash flag, not a live Discord interaction), so a message adopted after
    a crash is answered where and how the original would have been."""
    return {k: v for k, v in context.items() if isinstance(v, (str, int, float, bool)) or v is None}


def message_from_doc(doc: dict[str, Any]) -> Message:
    """Rebuild a message from its stored document (crash recovery). Attachments are not
    re-downloaded: their text, if read, is already stored."""
    return Message(
        platform=doc["platform"], conversation_id=doc["conversation_id"], message_id=doc["message_id"],
        author_id=doc["author_id"], author_name=doc["author_name"], text=doc["text"], is_dm=doc["is_dm"],
        ts=to_datetime(doc["ts"]), thread_id=doc.get("thread_id"), mentions_bot=doc.get("mentions_bot", False),
        replies_to_bot=doc.get("replies_to_bot", False), link=doc.get("link"),
        is_command=doc.get("is_command", False), reply_context=dict(doc.get("reply_context") or {}),
    )
