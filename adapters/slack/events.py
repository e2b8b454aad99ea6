"""Slack payloads -> `core.Message`, as pure functions (no network here).

The same Slack message can arrive twice as two different events — `message` (channel/DM
subscription) and `app_mention` — so both are turned into the *same* Message: message_id is
the message's `ts`, and the core's dedupe on slack:channel:ts collapses them into one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.slack.mrkdwn import to_plain
from core.models import Attachment, AttachmentKind, Message

PLATFORM = "slack"

# Message subtypes that are something a person said. Joins, topic changes, bot posts and the
# like are not remembered.
_SAID = {None, "file_share", "thread_broadcast", "me_message"}

# `/mnemo SUBCOMMAND ...` -> the core's text commands.
SUBCOMMANDS = frozenset(
    {"ask", "deep", "memory", "profile", "forget", "export", "settings", "help", "start", "optout", "optin",
     "dashboard"}
)

Fetcher = Callable[[dict[str, Any]], Callable[[], Awaitable[bytes]]]


@dataclass(frozen=True)
class Said:
    """A person's message, with what the adapter still has to look up before submitting."""

    event: dict[str, Any]  # the Slack message object (for an edit: the edited message)
    channel: str
    edited: bool = False


def classify(event: dict[str, Any]) -> Said | None:
    """Which `message`/`app_mention` events carry something a person said (None: ignore)."""
    channel = event.get("channel")
    if not isinstance(channel, str):
        return None
    subtype = event.get("subtype")
    if subtype == "message_changed":
        edited = event.get("message") or {}
        previous = event.get("previous_message") or {}
        # Link unfurls also arrive as message_changed with the text unchanged.
        if not _from_person(edited) or edited.get("text") == previous.get("text"):
            return None
        return Said(edited, channel, edited=True)
    if subtype not in _SAID or not _from_person(event):
        return None
    return Said(event, channel)


def _from_person(event: dict[str, Any]) -> bool:
    return bool(event.get("user")) and not event.get("bot_id") and "ts" in event


def is_dm_channel(channel: str, event: dict[str, Any] | None = None) -> bool:
    if event is not None and event.get("channel_type"):
        return event["channel_type"] == "im"
    return channel.startswith("D")


def slack_time(ts: str) -> datetime:
    return datetime.fromtimestamp(float(ts), tz=UTC)


def attachment_kind(file: dict[str, Any]) -> AttachmentKind:
    mime = str(file.get("mimetype") or "")
    if mime.startswith("audio/") or file.get("subtype") == "slack_audio":
        return "voice"
    if mime.startswith("image/"):
        return "image"
    return "file"


def to_message(
    said: Said,
    *,
    bot_user_id: str,
    author_name: str,
    link: str | None,
    fetcher: Fetcher,
) -> Message:
    event = said.event
    ts = str(event["ts"])
    raw_text = str(event.get("text") or "")
    thread_ts = event.get("thread_ts")
    attachments = [
        Attachment(
            kind=attachment_kind(file),
            filename=str(file.get("name") or file.get("title") or file.get("id") or "file"),
            mime_type=file.get("mimetype"),
            size=file.get("size") if isinstance(file.get("size"), int) else None,
            fetch=fetcher(file),
        )
        for file in event.get("files") or []
        if isinstance(file, dict)
    ]
    return Message(
        platform=PLATFORM,
        conversation_id=said.channel,
        message_id=ts,
        author_id=str(event["user"]),
        author_name=author_name,
        text=to_plain(raw_text),
        is_dm=is_dm_channel(said.channel, event),
        ts=slack_time(ts),
        thread_id=str(thread_ts) if thread_ts and thread_ts != ts else None,
        mentions_bot=f"<@{bot_user_id}>" in raw_text or f"<@{bot_user_id}|" in raw_text,
        replies_to_bot=bool(thread_ts) and event.get("parent_user_id") == bot_user_id,
        link=link,
        attachments=attachments,
        edited=said.edited,
    )


def display_name(profile: dict[str, Any], user: dict[str, Any]) -> str:
    for value in (profile.get("display_name"), profile.get("real_name"), user.get("real_name"), user.get("name")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def constructed_permalink(team_url: str, channel: str, ts: str, thread_ts: str | None) -> str | None:
    """Slack's permalink format, used when chat.getPermalink is unavailable."""
    if not team_url:
        return None
    link = f"{team_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"
    if thread_ts and thread_ts != ts:
        link += f"?thread_ts={thread_ts}&cid={channel}"
    return link


def command_text(text: str) -> str:
    """`/mnemo memory 2` arrives as text "memory 2" -> "/memory 2". Free text is a question."""
    stripped = text.strip()
    if not stripped:
        return "/help"
    word, _, rest = stripped.partition(" ")
    name = word.lower().lstrip("/")
    if name in SUBCOMMANDS:
        return f"/{name} {rest.strip()}".rstrip()
    return f"/ask {stripped}"


def slash_message(form: dict[str, Any], *, is_dm: bool, message_id: str) -> Message:
    """A slash command invocation. It has no message ts: `trigger_id` is its identity."""
    return Message(
        platform=PLATFORM,
        conversation_id=str(form["channel_id"]),
        message_id=message_id,
        author_id=str(form["user_id"]),
        author_name=str(form.get("user_name") or form["user_id"]),
        text=command_text(to_plain(str(form.get("text") or ""))),
        is_dm=is_dm,
        is_command=True,
        conversation_title=form.get("channel_name"),
        reply_context={"response_url": form.get("response_url") or "", "slash": True,
                       "command": form.get("command") or "/mnemo"},
    )
