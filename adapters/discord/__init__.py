"""Discord: discord.py on the gateway (guild channels, threads, DMs) plus application commands.

This package is `adapters.discord`; the SDK is the top-level `discord` (absolute imports only).
The adapter (and discord.py with it) loads on first use, so `adapters.discord.history` imports
without the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]


def __getattr__(name: str) -> Any:
    if name == "DiscordAdapter":
        from adapters.discord.adapter import DiscordAdapter

        return DiscordAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
