"""/profile over the wire on Slack: answered privately (ephemeral) in a channel, each fact with
its source message quoted and linked by its Slack permalink; a fact cited in a channel answer
carries that permalink in its footnote."""

from __future__ import annotations

from typing import Any

from tests.fakes.llm import FakeLLM
from tests.fakes.slack import FakeSlack, channel_message, slash_form

# The Slack test module's fixtures (the bot on real stores, the fake Slack), reused as they are.
from tests.test_slack import ALICE, BOB, CHANNEL, MENTION, Bot, bot, fake_slack, footnote_links  # noqa: F401


async def _eventually(check: Any, what: str, tries: int = 1200) -> Any:
    import asyncio

    for _ in range(tries):
        found = check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_profile_is_ephemeral_and_fact_footnotes_carry_the_source_permalink(
    bot: Bot, fake_slack: FakeSlack, fake_llm: FakeLLM  # noqa: F811 - the fixtures imported above
) -> None:
    said = channel_message(CHANNEL, ALICE, "I work at Initech Labs since Monday")
    await bot.event(said)
    await bot.settle()
    link = fake_slack.permalink(CHANNEL, said["ts"])
    await bot.post(slash_form("profile", user=ALICE, channel=CHANNEL, response_url=f"{fake_slack.url}/response/1"),
                   form=True)
    await bot.settle()
    [private] = await _eventually(lambda: fake_slack.calls_to("chat.postEphemeral"), "ephemeral /profile")
    shown = private.args["text"]
    assert private.args["user"] == ALICE and private.args["channel"] == CHANNEL
    assert "Alice works at Initech Labs" in shown and "I work at Initech Labs since Monday" in shown, shown
    assert link in shown, shown  # the source message, by its permalink
    assert fake_slack.posts() == []  # nothing about Alice went public
    assert fake_llm.learning_requests()  # learned through the record_facts tool

    await bot.event(channel_message(CHANNEL, BOB, f"{MENTION} where does Alice work?"))
    await bot.settle()
    [answer] = await _eventually(fake_slack.posts, "answer from the fact")
    text = answer.args["text"]
    notes = [line for line in text.splitlines() if "Fact" in line]
    assert notes and "Alice works at Initech Labs" in notes[0] and "I work at Initech Labs since Monday" in notes[0], text
    assert link in footnote_links(text), text
