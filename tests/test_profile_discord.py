"""/profile over the wire on Discord: an ephemeral answer in a guild channel, each fact with its
source message quoted and linked by its jump URL; a fact cited in a channel answer carries that
jump URL in its footnote."""

from __future__ import annotations

from tests.fakes.discord import BOB, CHANNEL_ID, EPHEMERAL
from tests.fakes.llm import FakeLLM

# The Discord test module's fixtures (the bot on real stores, the fake Discord), reused as they are.
from tests.test_discord import Bot, bot, fake, jump_url  # noqa: F401


async def test_profile_is_ephemeral_and_fact_footnotes_carry_the_source_jump_url(
    bot: Bot, fake_llm: FakeLLM  # noqa: F811 - the fixture imported above
) -> None:
    discord = bot.fake
    said = await bot.say(discord.message("I work at Initech Labs since Monday"))
    await bot.idle()
    link = jump_url(CHANNEL_ID, said["id"])
    discord.dispatch("INTERACTION_CREATE", discord.interaction("profile"))
    await discord.until(lambda: len(discord.followups) == 1, what="/profile")
    profile = discord.followups[0]
    assert profile["flags"] & EPHEMERAL and discord.callbacks[0]["data"]["flags"] == EPHEMERAL
    shown = profile["content"]
    assert "Alice works at Initech Labs" in shown and "I work at Initech Labs since Monday" in shown, shown
    assert link in shown, shown  # the source message, by its jump URL
    assert discord.sent == []  # nothing about Alice went to the channel
    assert fake_llm.learning_requests()  # learned through the record_facts tool

    asked = await bot.say(discord.message("where does Alice work?", author=BOB, mention_bot=True))
    [answer] = await bot.replies(asked)
    notes = [line for line in answer["content"].splitlines() if "Fact" in line]
    assert notes and "Alice works at Initech Labs" in notes[0], answer["content"]
    assert "I work at Initech Labs since Monday" in notes[0] and link in notes[0], answer["content"]
