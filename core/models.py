"""Platform-neutral values that flow between adapters and the core.

Adapters build a `Message` from a platform event and render a `Reply` back; nothing here
knows about any SDK.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

AttachmentKind = Literal["voice", "audio", "image", "file"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Scope:
    """A privacy boundary for memory.

    `dm` scopes belong to one user on one platform (all of that user's DMs with the bot);
    `group` scopes belong to one group conversation. Retrieval may only read the scopes a
    conversation allows, and each scope is its own Chroma collection.
    """

    kind: Literal["dm", "group"]
    platform: str
    owner: str  # dm: the user's platform id; group: the conversation's platform id

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.platform}:{self.owner}"

    @classmethod
    def parse(cls, key: str) -> Scope:
        kind, platform, owner = key.split(":", 2)
        if kind not in ("dm", "group"):
            raise ValueError(f"not a scope key: {key!r}")
        return cls(kind, platform, owner)  # type: ignore[arg-type]


@dataclass
class Attachment:
    """A file on a message. The adapter declares what it knows before downloading;
    the core checks limits first and only then calls `fetch`."""

    kind: AttachmentKind
    filename: str
    mime_type: str | None = None
    size: int | None = None  # bytes, when the platform says so before download
    duration_s: float | None = None
    fetch: Callable[[], Awaitable[bytes]] | None = None
    data: bytes | None = None  # already downloaded (console, tests)

    async def read(self) -> bytes:
        if self.data is None:
            if self.fetch is None:
                raise ValueError("attachment has neither data nor a way to fetch it")
            self.data = await self.fetch()
        return self.data


@dataclass
class Message:
    """One incoming user message, normalized.

    `message_id` is the platform's id for the message (unique within the conversation);
    together with platform and conversation it is the dedupe key, so a redelivered event
    is a no-op. `link` is a permalink to the original where the platform has one.
    """

    platform: str
    conversation_id: str
    message_id: str
    author_id: str
    author_name: str
    text: str
    is_dm: bool
    ts: datetime = field(default_factory=utcnow)
    thread_id: str | None = None  # forum topic / Slack thread_ts / Discord thread channel
    mentions_bot: bool = False
    replies_to_bot: bool = False
    link: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    conversation_title: str | None = None
    # A command delivered out of band (Slack slash command, Discord interaction): answers to
    # it are ephemeral-capable and it is never remembered as a memory.
    is_command: bool = False
    # Opaque adapter data needed to reply (interaction tokens, response_url...). Not stored.
    reply_context: dict[str, object] = field(default_factory=dict)
    edited: bool = False

    @property
    def event_key(self) -> str:
        return f"{self.platform}:{self.conversation_id}:{self.message_id}"

    @property
    def conversation_key(self) -> str:
        return f"{self.platform}:{self.conversation_id}"

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.author_id}"

    @property
    def scope(self) -> Scope:
        if self.is_dm:
            return Scope("dm", self.platform, self.author_id)
        return Scope("group", self.platform, self.conversation_id)


@dataclass(frozen=True)
class Footnote:
    """A cited source, rendered as one line: `[n] author, date: "quote" link`."""

    number: int
    author: str
    date: datetime
    quote: str
    link: str | None = None
    source_kind: Literal["text", "voice", "audio", "image", "file"] = "text"
    memory_id: str = ""
    # A learned fact cited: the fact's text; author/date/quote/link are the message it came from.
    fact: str | None = None
    earlier: bool = False  # the fact is history (superseded or retired)


@dataclass
class ReplyFile:
    filename: str
    data: bytes
    mime_type: str = "application/json"


@dataclass
class Reply:
    """What the core wants said, platform-neutral. `text` keeps `[n]` markers; the adapter
    renders footnotes after it. `private` replies go to the asker only (a DM on Telegram,
    ephemeral on Slack and Discord)."""

    text: str
    footnotes: list[Footnote] = field(default_factory=list)
    private: bool = False
    file: ReplyFile | None = None
    is_error: bool = False


@dataclass(frozen=True)
class PlatformLimits:
    """What an adapter declares about its platform."""

    max_message_chars: int
    max_download_bytes: int | None = None  # e.g. Telegram getFile caps at 20 MB
