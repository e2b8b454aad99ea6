"""Per-channel settings: the keys, their valid values, storage and the audit log.

Settings are read from MongoDB on every message (no process-local cache), so a change made
through any worker takes effect on the next message everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.store import Store

PERSONA_MAX_CHARS = 500


@dataclass(frozen=True)
class ChannelSettings:
    respond_to: str = "mentions"  # mentions | all | off
    mode: str = "fast"  # fast | reasoning
    memory: str = "on"  # on | off
    persona: str = ""
    citations: str = "on"  # on | off
    retention_days: str = "forever"  # a whole number of days, or "forever"
    streaming: str = "on"  # on | off: show answers while they are written (core.streaming)

    @property
    def retention(self) -> int | None:
        return None if self.retention_days == "forever" else int(self.retention_days)


CHOICES: dict[str, tuple[str, ...]] = {
    "respond_to": ("mentions", "all", "off"),
    "mode": ("fast", "reasoning"),
    "memory": ("on", "off"),
    "citations": ("on", "off"),
    "streaming": ("on", "off"),
}
KEYS = tuple(f.name for f in fields(ChannelSettings))


class SettingError(ValueError):
    """An unknown key or invalid value; the message lists what is valid."""


def valid_values(key: str) -> str:
    if key in CHOICES:
        return " | ".join(CHOICES[key])
    if key == "persona":
        return f"free text up to {PERSONA_MAX_CHARS} characters (or 'none' to clear)"
    return "a whole number of days (1-36500) or 'forever'"


def normalize(key: str, value: str) -> str:
    key = key.strip().lower()
    if key not in KEYS:
        raise SettingError(f"Unknown setting '{key}'. Valid settings: {', '.join(KEYS)}.")
    raw = value.strip()
    if key in CHOICES:
        lowered = raw.lower()
        if lowered not in CHOICES[key]:
            raise SettingError(f"Invalid value for {key}: '{raw}'. Valid values: {valid_values(key)}.")
        return lowered
    if key == "persona":
        if raw.lower() in ("none", "off", "clear", '""'):
            return ""
        if len(raw) > PERSONA_MAX_CHARS:
            raise SettingError(f"persona is too long ({len(raw)} characters); the limit is {PERSONA_MAX_CHARS}.")
        return raw
    lowered = raw.lower()
    if lowered in ("forever", "never", "off", "none"):
        return "forever"
    if not lowered.isdigit() or not 1 <= int(lowered) <= 36500:
        raise SettingError(f"Invalid value for retention_days: '{raw}'. Valid values: {valid_values(key)}.")
    return str(int(lowered))


def describe(settings: ChannelSettings) -> str:
    lines = []
    for key in KEYS:
        value = getattr(settings, key)
        shown = value if value != "" else "(none)"
        lines.append(f"{key}: {shown}")
    return "\n".join(lines)


class SettingsRepo:
    def __init__(self, store: Store) -> None:
        self.docs = store.settings

    async def get(self, conversation_key: str) -> ChannelSettings:
        stored = await self.docs.stored_settings(conversation_key)
        known = {k: str(v) for k, v in stored.items() if k in KEYS}
        return ChannelSettings(**known)

    async def set(self, conversation_key: str, key: str, value: str, who: str) -> tuple[str, str]:
        """Validate and store one setting, with an audit entry. Returns (old, new)."""
        new = normalize(key, value)
        key = key.strip().lower()
        old = getattr(await self.get(conversation_key), key)
        await self.docs.save(conversation_key, key, old, new, who)
        return old, new

    async def all_with_retention(self) -> list[tuple[str, int]]:
        return [(key, int(days)) for key, days in await self.docs.retention_days()]

    async def move(self, old_key: str, new_key: str) -> None:
        """Carry settings over when a conversation changes identity (Telegram group -> supergroup)."""
        await self.docs.copy_conversation(old_key, new_key)


def as_dict(settings: ChannelSettings) -> dict[str, Any]:
    return asdict(settings)
