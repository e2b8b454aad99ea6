"""Learning through `mnemo chat`: a real process, real stores, the loopback model speaking the
`record_facts` tool (DESIGN.md "Learning"). Assertions are on what a person sees (/profile,
answers and their footnotes) and on what reached the model."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import run_chat
from tests.fakes.llm import FakeLLM

FACT_ID = re.compile(r"• (F\w{9}) · ")


def _learning_text(fake_llm: FakeLLM, start: int = 0) -> str:
    return "\n".join(r["messages"][-1]["content"] for r in fake_llm.learning_requests()[start:])


def test_facts_are_learned_updated_and_shown_with_their_sources(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    env = {**base_env, **fake_llm.env()}
    first = run_chat(["I live in Lisbon and I work at Acme Robotics."], env, "--user", "alice")
    assert first.returncode == 0, first.stderr
    # learned before the process exited, in one request that offered and required the tool
    [request] = fake_llm.learning_requests()
    assert [t["function"]["name"] for t in request["tools"]] == ["record_facts"]
    assert request["tool_choice"] == {"type": "function", "function": {"name": "record_facts"}}
    assert re.search(r"^\[1\] alice, \d{4}-\d{2}-\d{2}: I live in Lisbon", request["messages"][-1]["content"],
                     re.MULTILINE)

    shown = run_chat(["/profile"], env, "--user", "alice").stdout
    assert "alice lives in Lisbon" in shown and "alice works at Acme Robotics" in shown, shown
    assert "\u201cI live in Lisbon and I work at Acme Robotics.\u201d" in shown  # the source, quoted
    [lisbon] = re.findall(r"• (F\w{9}) · alice lives in Lisbon", shown)

    run_chat(["Big news: I moved to Porto last week."], env, "--user", "alice")
    update = fake_llm.learning_requests()[-1]["messages"][-1]["content"]
    assert f"{{{lisbon}}} alice lives in Lisbon" in update  # the known fact was listed by id
    after = run_chat(["/profile"], env, "--user", "alice").stdout
    current, _, earlier = after.partition("Earlier (no longer current):")
    assert "alice lives in Porto" in current and "alice lives in Lisbon" not in current, after
    assert "alice works at Acme Robotics" in current
    assert f"{lisbon} · alice lives in Lisbon" in earlier and "I live in Lisbon" in earlier

    # a question is answered from the current fact; its footnote names it and quotes the message
    answer = run_chat(["Tell me where alice lives now."], env, "--user", "alice").stdout
    assert "Porto" in answer, answer
    assert re.search(r"^\[\d\] Fact \u201calice lives in Porto\u201d, learned from alice, [\d-]+: "
                     r"\u201cBig news: I moved to Porto last week.\u201d", answer, re.MULTILINE), answer
    prompt = fake_llm.answer_requests()[-1]["messages"][-1]["content"]
    assert "alice lives in Porto" in prompt and "alice lives in Lisbon" not in prompt  # no history here
    # about the past, the earlier fact comes too, after the current one
    before = run_chat(["Where did alice live before?"], env, "--user", "alice")
    prompt = fake_llm.answer_requests()[-1]["messages"][-1]["content"]
    assert prompt.index("alice lives in Porto") < prompt.index("alice lives in Lisbon"), prompt
    assert before.returncode == 0


def test_dm_facts_stay_out_of_groups_and_forgetting_the_source_forgets_the_fact(
    base_env: dict[str, str], fake_llm: FakeLLM
) -> None:
    env = {**base_env, **fake_llm.env()}
    run_chat(["I work at Globex Secret Labs."], env, "--user", "bob")
    assert "Globex" in _learning_text(fake_llm)
    start = len(fake_llm.chat_requests())
    group = run_chat(["my favourite colour is teal", "/profile", "@mnemo where does bob work?"], env,
                     "--user", "bob", "--channel", "general")
    assert group.returncode == 0, group.stderr
    assert "Globex" not in group.stdout
    assert "(only you can see this) What I've learned about you" in group.stdout  # private in a group
    assert "bob's favourite colour is teal" in group.stdout
    assert "Globex" not in json.dumps(fake_llm.chat_requests()[start:])  # in no request, learning included

    dm = run_chat(["/memory", "/profile"], env, "--user", "bob").stdout
    [source] = re.findall(r"• (m\w{9}) · DM", dm)
    assert "bob works at Globex Secret Labs" in dm
    forgot = run_chat([f"/forget {source}", "/profile"], env, "--user", "bob").stdout
    assert "Globex" not in forgot.split(f"Done: I forgot {source}.")[-1], forgot


def test_forget_fact_by_id_and_forget_all(base_env: dict[str, str], fake_llm: FakeLLM, tmp_path: Path) -> None:
    env = {**base_env, **fake_llm.env()}
    run_chat(["I live in Oslo.", "My favourite food is ramen."], env, "--user", "cara")
    shown = run_chat(["/profile"], env, "--user", "cara").stdout
    ids = {text: fid for fid, text in re.findall(r"• (F\w{9}) · ([^(]+?) \(", shown)}
    assert set(ids) == {"cara lives in Oslo", "cara's favourite food is ramen"}, shown
    exported = run_chat(["/export"], env, "--user", "cara").stdout
    path = Path(re.search(r"Written to (\S+)", exported).group(1))  # type: ignore[union-attr]
    facts = json.loads(path.read_text())["facts"]
    assert {f["text"] for f in facts} == set(ids)
    assert all(f["sources"] and f["sources"][0]["text"] in ("I live in Oslo.", "My favourite food is ramen.")
               for f in facts)
    one = run_chat([f"/forget {ids['cara lives in Oslo']}", "/profile"], env, "--user", "cara").stdout
    assert "Oslo" not in one.split("Done:")[-1] and "ramen" in one, one
    everything = run_chat(["/forget all", "/profile"], env, "--user", "cara").stdout
    assert "I haven't learned anything about you here yet." in everything, everything


def test_nothing_is_learned_kept_or_listed_while_opted_out(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    env = {**base_env, **fake_llm.env()}
    run_chat(["/optout", "I live in Reykjavik and my favourite band is Sigur Ros."], env, "--user", "dan")
    assert "Reykjavik" not in _learning_text(fake_llm)
    seen = run_chat(["/memory", "/profile", "/export"], env, "--user", "dan").stdout
    assert "Reykjavik" not in seen
    path = Path(re.search(r"Written to (\S+)", seen).group(1))  # type: ignore[union-attr]
    assert "Reykjavik" not in path.read_text()
    # a channel with memory off: not sent to learning either
    run_chat(["/settings memory off", "I live in Tromso."], env, "--user", "eve", "--channel", "quiet", "--admin")
    assert "Tromso" not in json.dumps(fake_llm.learning_requests())


def test_a_failed_or_malformed_learning_answer_loses_nothing(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    env = {**base_env, **fake_llm.env()}
    fake_llm.facts_script = ['{"facts": "not a list"']  # broken JSON
    broken = run_chat(["I live in Quito."], env, "--user", "gus")
    assert broken.returncode == 0, broken.stderr
    assert "Quito" not in broken.stderr  # failures are logged without what was said
    fake_llm.learning_fail = True
    run_chat(["My favourite tea is sencha."], env, "--user", "gus")
    fake_llm.learning_fail = False
    shown = run_chat(["/profile"], env, "--user", "gus").stdout
    assert "gus lives in Quito" in shown and "gus's favourite tea is sencha" in shown, shown
    assert shown.count("gus lives in Quito") == 1
    # the retry sent both messages again, together
    last = fake_llm.learning_requests()[-1]["messages"][-1]["content"]
    assert "I live in Quito." in last and "sencha" in last


def test_without_a_model_profile_says_learning_needs_one(base_env: dict[str, str]) -> None:
    out = run_chat(["I live in Lima.", "/profile"], base_env, "--user", "hal").stdout
    assert "Learning needs a model" in out


def test_questions_alone_start_no_learning_request(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    """Learning reads only what people told: a chat of questions costs no learning request,
    and the questions are not sent along when something is told later."""
    env = {**base_env, **fake_llm.env()}
    asked = run_chat(["Where is the nearest pharmacy?", "What time is it in Tokyo?"], env, "--user", "carol")
    assert asked.returncode == 0, asked.stderr
    assert len(fake_llm.answer_requests()) == 2
    assert fake_llm.learning_requests() == []
    run_chat(["I play the cello in a quartet."], env, "--user", "carol")
    [request] = fake_llm.learning_requests()
    sent = request["messages"][-1]["content"]
    assert "cello" in sent and "pharmacy" not in sent and "Tokyo" not in sent, sent
