"""The application commands Mnemo registers, each normalized to the core's command text.

No `from __future__ import annotations` here: discord.py reads the option types from the
callbacks' real annotations.
"""

from collections.abc import Awaitable, Callable

import discord
from discord import app_commands

from core.channel_settings import KEYS

# (interaction, core command text, answer only the invoker) -> None
RunCommand = Callable[[discord.Interaction, str, bool], Awaitable[None]]


def register_commands(tree: app_commands.CommandTree, run: RunCommand) -> None:
    @tree.command(name="ask", description="Ask Mnemo; the answer cites what it remembers")
    @app_commands.describe(question="Your question")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await run(interaction, f"/ask {question}", False)

    @tree.command(name="memory", description="What Mnemo remembers from you (only you see this)")
    @app_commands.describe(page="Page to show (10 memories per page)")
    async def memory(
        interaction: discord.Interaction, page: app_commands.Range[int, 1, 100000] | None = None
    ) -> None:
        await run(interaction, f"/memory {page}" if page else "/memory", True)

    @tree.command(name="profile", description="What Mnemo has learned about you, with sources (only you see this)")
    async def profile(interaction: discord.Interaction) -> None:
        await run(interaction, "/profile", True)

    @tree.command(name="forget", description="Delete one memory by id, or all of yours")
    @app_commands.describe(target="A memory id from /memory, a fact id from /profile, or 'all'")
    async def forget(interaction: discord.Interaction, target: str) -> None:
        await run(interaction, f"/forget {target}", True)

    @tree.command(name="export", description="All your data as a JSON file (only you see this)")
    async def export(interaction: discord.Interaction) -> None:
        await run(interaction, "/export", True)

    @tree.command(name="settings", description="Show this channel's settings; Manage Channels may change them")
    @app_commands.describe(key="Setting to change (leave empty to show all)", value="New value")
    @app_commands.choices(key=[app_commands.Choice(name=key, value=key) for key in KEYS])
    async def settings(
        interaction: discord.Interaction, key: str | None = None, value: str | None = None
    ) -> None:
        text = " ".join(part for part in ("/settings", key, value) if part)
        await run(interaction, text, True)

    @tree.command(name="optout", description="Stop Mnemo remembering your messages anywhere")
    async def optout(interaction: discord.Interaction) -> None:
        await run(interaction, "/optout", True)

    @tree.command(name="optin", description="Let Mnemo remember your messages again")
    async def optin(interaction: discord.Interaction) -> None:
        await run(interaction, "/optin", True)

    @tree.command(name="dashboard", description="A one-time link to your web page (only you see this)")
    async def dashboard(interaction: discord.Interaction) -> None:
        await run(interaction, "/dashboard", True)

    @tree.command(name="help", description="How to use Mnemo")
    async def help_(interaction: discord.Interaction) -> None:
        await run(interaction, "/help", True)
