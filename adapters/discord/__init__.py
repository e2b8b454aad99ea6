"""Discord: discord.py on the gateway (guild channels, threads, DMs) plus application commands.

This package is `adapters.discord`; the SDK is the top-level `discord` (absolute imports only).
"""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
