"""What Mnemo makes of what people say (DESIGN.md "What is a memory, and when Mnemo answers"),
through `mnemo chat` on the real stores, with and without the loopback model."""

from __future__ import annotations

import re
from typing import Any

from core.kinds import COMMAND, GREETING, QUESTION, REPLY, TOLD, is_question
from core.memory.index import MemoryItem
from core.migrations import MESSAGE_KINDS, classify_stored_messages
from core.models import Scope, utcnow
from tests.conftest import run_chat
from tests.fakes.llm import FakeLLM

FOOTNOTE = re.compile(r"^\[(\d+)\] ", re.MULTILINE)


def replies(stdout: str) -> list[str]:
    """stdout split into replies: a reply is its body lines plus the footnotes under it."""
    out: list[str] = []
    for line in stdout.splitlines():
        if not line:
            continue
        if FOOTNOTE.match(line) and out:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def prompt_of(request: dict[str, Any]) -> str:
    return str(request["messages"][-1]["content"])


def test_a_statement_is_acknowledged_in_one_line_without_footnotes(base_env: dict[str, str]) -> None:
    result = run_chat(["My locker code is 4817."], base_env, "--user", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Got it, I'll remember that."
    listing = run_chat(["/memory"], base_env, "--user", "alice").stdout
    assert "What I remember from you (1 message, page 1/1" in listing, listing


def test_with_a_model_a_statement_gets_the_models_short_reply_told_it_is_a_statement(
    base_env: dict[str, str], fake_llm: FakeLLM
) -> None:
    env = {**base_env, **fake_llm.env()}
    result = run_chat(["I started learning the cello last week."], env, "--user", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Noted, thanks."
    prompt = prompt_of(fake_llm.answer_requests()[-1])
    assert "alice tells you: I started learning the cello" in prompt
    assert "not asking a question" in prompt and "Sources:" not in prompt


def test_an_unrelated_question_is_answered_without_footnotes_or_memories(
    base_env: dict[str, str], fake_llm: FakeLLM
) -> None:
    told = run_chat(["My locker code is 4817 and my dentist is Dr. Okafor."], base_env, "--user", "alice")
    assert told.returncode == 0, told.stderr
    plain = run_chat(["What is the capital of France?"], base_env, "--user", "alice")
    [reply] = replies(plain.stdout)
    assert reply.startswith("I don't have anything on that.") and not FOOTNOTE.search(reply), reply
    assert "4817" not in reply
    env = {**base_env, **fake_llm.env()}
    modelled = run_chat(["Which river flows through Paris?"], env, "--user", "alice")
    assert not FOOTNOTE.search(modelled.stdout), modelled.stdout
    prompt = prompt_of(fake_llm.answer_requests()[-1])
    assert "Sources: none. Nothing I remember is relevant to this question." in prompt
    assert not FOOTNOTE.search(prompt), prompt  # no numbered source at all


def test_with_nothing_remembered_the_reply_says_so_and_cites_nothing(
    base_env: dict[str, str], fake_llm: FakeLLM
) -> None:
    plain = run_chat(["What is the capital of France?", "And of Spain?"], base_env, "--user", "newcomer")
    first, second = replies(plain.stdout)
    assert first.startswith("I don't have anything on that.") and "no model is configured" in first
    assert second == "I don't have anything on that."  # the retrieval-only notice is not repeated
    env = {**base_env, **fake_llm.env()}
    run_chat(["What is the capital of Italy?"], env, "--user", "other")
    prompt = prompt_of(fake_llm.answer_requests()[-1])
    assert "Sources: none. Nothing I remember is relevant to this question." in prompt


def test_an_earlier_question_is_never_cited_and_the_notice_is_said_in_full_once(base_env: dict[str, str]) -> None:
    result = run_chat(
        ["When is Ana's birthday?", "Ana's birthday is on March 3rd.", "When is Ana's birthday?",
         "Ana's birthday party is at Lucia's place.", "Where is Ana's birthday party?", "/memory"],
        base_env, "--user", "alice",
    )
    assert result.returncode == 0, result.stderr
    got = replies(result.stdout)
    assert got[0].startswith("I don't have anything on that. Retrieval-only mode: no model is configured"), got
    answers = got[2:5:2]
    for answer in answers:
        quotes = re.findall(r"^\[\d+\] alice, [\d-]+: “(.*)”$", answer, re.MULTILINE)
        assert quotes and all("?" not in q for q in quotes), answer  # only what was told
        assert answer.startswith("Retrieval-only (no model is configured): [1]"), answer  # said briefly
    assert "March 3rd" in answers[0] and "Lucia" in answers[1]
    assert result.stdout.count("set MNEMO_MODEL") == 1  # the notice in full, once per conversation
    listing = result.stdout[result.stdout.index("What I remember from you"):]
    assert "(2 messages" in listing and "?" not in listing.split("newest first):")[1], listing


def test_an_unknown_command_is_refused_and_never_remembered(base_env: dict[str, str]) -> None:
    result = run_chat(["/foo bar baz", "/Remindme tomorrow", "/memroy", "/memory"], base_env, "--user", "alice")
    assert result.returncode == 0, result.stderr
    got = replies(result.stdout)
    assert got[:2] == ["Unknown command /foo, see /help", "Unknown command /remindme, see /help"], got
    assert got[2] == "Unknown command /memroy, see /help (did you mean /memory?)"  # a typo gets a hint
    assert got[3] == "I don't remember anything from you."
    later = run_chat(["what about foo bar baz?"], base_env, "--user", "alice")
    assert "foo bar baz" not in later.stdout  # never a source


def test_blank_console_lines_are_ignored_and_an_empty_mention_gets_a_clear_reply(base_env: dict[str, str]) -> None:
    dm = run_chat(["", "   ", "\u200b", "👋", "thanks!", "Olá!", "merci beaucoup", "/memory"], base_env, "--user", "dana")
    assert dm.returncode == 0, dm.stderr
    # blank lines get nothing; small talk (in other languages too) a friendly word, and it is no memory
    assert replies(dm.stdout) == [
        GREETING, "You're welcome!", GREETING, "You're welcome!", "I don't remember anything from you."
    ], dm.stdout
    group = run_chat(["@mnemo", ""], base_env, "--user", "dana", "--channel", "ops")
    assert replies(group.stdout) == ["Your message was empty. Send me some text, a voice note or an image."]


def test_a_follow_up_reaches_the_model_with_the_previous_answer(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    env = {**base_env, **fake_llm.env()}
    result = run_chat(["Ana loves orchids and hates lilies.", "What flowers does Ana love?", "why do you say that?"],
                      env, "--user", "alice")
    assert result.returncode == 0, result.stderr
    answer = replies(result.stdout)[1].splitlines()[0]
    assert answer.startswith("From what I remember: ") and "[1]" in answer, result.stdout
    follow_up = prompt_of(fake_llm.answer_requests()[-1])
    turns = follow_up.split("Recent conversation (oldest first):")[1].split("alice asks: why do you say that?")[0]
    assert "alice: What flowers does Ana love?" in turns
    assert f"Mnemo: {answer}" in turns, follow_up  # the previous answer, labelled by the bot's name
    assert follow_up.index("Mnemo: ") < follow_up.index("alice asks: why")
    # the follow-up still finds what the previous answer was based on
    assert re.search(r"^\[1\] .*alice: Ana loves orchids", follow_up, re.MULTILINE), follow_up


def test_a_huge_message_is_quoted_never_pasted_whole(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    env = {**base_env, **fake_llm.env()}
    huge = " ".join(f"Line {i} of the quarterly inventory lists {i * 7} crates of pears." for i in range(2000))
    assert len(huge) > 100_000
    result = run_chat([huge, "My dentist appointment is on Tuesday at 4pm.", "When is my dentist appointment?",
                       "How many crates of pears are on line 3?"], env, "--user", "alice")
    assert result.returncode == 0, result.stderr
    requests = fake_llm.answer_requests()
    assert len(requests) == 4
    for request in requests:
        assert huge not in str(request) and len(str(request)) < 20_000, len(str(request))
    later = prompt_of(requests[2])
    assert re.search(r"^alice: Line 0 of the quarterly .*crates of pears\. … \[cut\]$", later, re.MULTILINE), later
    pears = prompt_of(requests[3])
    assert re.search(r"^\[\d\] .*alice: Line 0 .*pears\. … \[cut\]$", pears, re.MULTILINE), pears  # a capped source


def test_people_talking_to_each_other_in_a_group_are_remembered_and_cited(base_env: dict[str, str]) -> None:
    bob = run_chat(["are we still on for the offsite in Porto?"], base_env, "--user", "bob", "--channel", "team")
    assert bob.stdout == ""  # not addressed: remembered, not answered
    ann = run_chat(["yes, the Porto offsite is on June 12", "@mnemo note: standup moved to 10"],
                   base_env, "--user", "ann", "--channel", "team")
    assert replies(ann.stdout) == ["Got it, I'll remember that."], ann.stdout  # a mention that tells
    carol = run_chat(["@mnemo when is the Porto offsite?", "@mnemo what time is standup now?"],
                     base_env, "--user", "carol", "--channel", "team")
    offsite, standup = replies(carol.stdout)
    assert re.search(r"^\[\d\] ann, .*Porto offsite is on June 12", offsite, re.MULTILINE), offsite
    assert re.search(r"^\[\d\] bob, .*offsite in Porto\?", offsite, re.MULTILINE), offsite  # a question, told
    assert re.search(r"^\[\d\] ann, .*note: standup moved to 10", standup, re.MULTILINE), standup
    assert "when is the Porto offsite" not in standup  # carol asked Mnemo: not a memory
    listing = run_chat(["/memory"], base_env, "--user", "bob", "--channel", "team").stdout
    assert "offsite in Porto?" in listing


def test_question_shapes() -> None:
    asks = ["When is Ana's birthday", "what's my locker code", "Is it raining in Porto",
            "tell me anything you know about penicillin", "remind me when the dentist is",
            "My flight is at 7. When should I leave", "hey, do you know my wifi password",
            "¿Dónde está la llave?", "list my notes", "wifi password", "Ana's birthday"]
    tells = ["Remember this: my locker code is 4817", "remind me that the plumber comes on Friday",
             "Have a great weekend", "note: standup moved to 10", "The deploy window is Thursday",
             "List: milk, eggs", "👋", "thanks!", "ok thank you", "standup at 10", "I moved",
             "Olá!", "merci beaucoup", "Buenos días"]
    assert [q for q in asks if not is_question(q)] == []
    assert [t for t in tells if is_question(t)] == []


async def test_existing_data_is_reclassified_once_and_non_memories_leave_the_index(make_core: Any) -> None:
    core = await make_core()
    scope = Scope("dm", "console", "alice")
    old = [  # documents as stored before message kinds, all indexed but the command
        ("m1", "My locker code is 4817.", False), ("m2", "What is my locker code?", False),
        ("m3", "/memory", True), ("m4", "/foo bar", False),
    ]
    for memory_id, text, is_command in old:
        await core.store.messages.insert_one({
            "_id": memory_id, "key": f"console:dm-alice:{memory_id}", "platform": "console",
            "conversation_key": "console:dm-alice", "conversation_id": "dm-alice", "message_id": memory_id,
            "scope": scope.key, "is_dm": True, "author_key": "console:alice", "author_id": "alice",
            "author_name": "alice", "text": text, "ts": utcnow(), "is_command": is_command, "attachments": [],
            "remember": not is_command, "remembered": not is_command, "state": "done", "created_at": utcnow(),
        })
    await core.index.add([MemoryItem(m, scope, text, "alice", utcnow().timestamp()) for m, text, c in old if not c])
    await core.store.replies.insert_one({"_id": "r1", "message_key": "console:dm-alice:m2", "text": "[1]"})
    await core.store.db["migrations"].delete_one({"_id": MESSAGE_KINDS})  # as on a data dir from before

    assert await classify_stored_messages(core) == 4
    kinds = {d["_id"]: d["kind"] async for d in core.store.messages.find({})}
    assert kinds == {"m1": TOLD, "m2": QUESTION, "m3": COMMAND, "m4": COMMAND}
    assert await core.index.get_ids(scope, ["m1", "m2", "m3", "m4"]) == ["m1"]
    assert (await core.store.replies.find_one({"_id": "r1"}))["kind"] == REPLY
    assert await core.store.messages.count_documents({"remembered": True}) == 1
    assert await classify_stored_messages(core) == 0  # done: one read of the marker
