"""Learning benchmark: facts that change over time, learned and recalled through the real path.

    python bench/learning.py [--seed 7] [--people 10] [--sessions 12]

A seeded generator writes a multi-session group conversation in which people state where they
live, where they work and what their favourite food is, then over later sessions move, change
jobs and change their minds, among small talk and distractors ("my cousin lives in Paris").
Every message goes through the real pipeline (`Core.handle`: stored, remembered, learned in the
background) on real stores; the learner is a loopback fake model (tests/fakes/llm.py) that
speaks `record_facts` over HTTP, so litellm's real tool-call path runs. After each session the
conversation's learning is flushed, as `/profile` would.

Then, per person and topic, "current value" questions ("Where does Ana live now?") and, where
the value changed, "what was it before" questions ("Where did Ana live before?") are recalled
as a reply would (`Core.recall`). A current question is right when its top source is the
current fact with the current value; a before question when its top earlier fact (history comes
right after the current fact, by design) holds the previous value. Also reported: learning cost
(model calls and tokens per 100 messages; tokens as the fake model counts them, ~4 chars each).

Progress on stderr; the last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models import Message, PlatformLimits, Reply

NAMES = ["Ana", "Bruno", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
CITIES = ["Lisbon", "Porto", "Madrid", "Berlin", "Oslo", "Vienna", "Prague", "Dublin", "Krakow", "Zurich",
          "Lyon", "Ghent"]
COMPANIES = ["Acme Robotics", "Globex", "Initech", "Umbrella Labs", "Stark Foods", "Wayne Logistics",
             "Hooli", "Vandelay Imports", "Soylent", "Cyberdyne"]
FOODS = ["ramen", "paella", "pierogi", "sushi", "falafel", "risotto", "tacos", "pho", "goulash", "dumplings"]
SMALL_TALK = [
    "Did anyone watch the match last night?", "The weather has been lovely this week.",
    "I'm so tired today, long meeting.", "Has anyone read a good book lately?",
    "Coffee machine is broken again.", "Happy Friday everyone!", "Anyone up for a walk at lunch?",
]
DISTRACTORS = [
    "My cousin lives in {city} and loves it.", "We spent a weekend in {city} last month.",
    "A friend just started at {company}, small world.", "I tried {food} once, it was okay.",
]
TOPICS = {
    "home": ("I live in {v}.", "Big news: I moved to {v}!", "{name} lives in {v}",
             "Where does {name} live now?", "Where did {name} live before?"),
    "job": ("I work at {v}.", "I started a new job at {v} this week.", "{name} works at {v}",
            "Where does {name} work now?", "Where did {name} work before?"),
    "food": ("My favourite food is {v}.", "My favourite food is now {v}.", "{name}'s favourite food is {v}",
             "What is {name}'s favourite food now?", "What was {name}'s favourite food before?"),
}
VALUES = {"home": CITIES, "job": COMPANIES, "food": FOODS}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def generate(seed: int, people: int, sessions: int) -> tuple[list[list[tuple[str, str]]], dict[str, Any]]:
    """Sessions of (author, text), and per person and topic the history of values."""
    rng = random.Random(seed)
    names = NAMES[:people]
    history: dict[str, dict[str, list[str]]] = {n: {t: [rng.choice(VALUES[t])] for t in TOPICS} for n in names}
    plan: list[list[tuple[str, str]]] = []
    first: list[tuple[str, str]] = []
    for name in names:
        for topic, (state, *_rest) in TOPICS.items():
            first.append((name, state.format(v=history[name][topic][0])))
        first.append((name, rng.choice(SMALL_TALK)))
    rng.shuffle(first)
    plan.append(first)
    for _ in range(1, sessions):
        session: list[tuple[str, str]] = []
        for name in names:
            for topic, (_state, change, *_rest) in TOPICS.items():
                if rng.random() < 0.25:
                    value = rng.choice([v for v in VALUES[topic] if v not in history[name][topic][-1:]])
                    history[name][topic].append(value)
                    session.append((name, change.format(v=value)))
            session.append((name, rng.choice(SMALL_TALK)))
            if rng.random() < 0.5:
                session.append((name, rng.choice(DISTRACTORS).format(
                    city=rng.choice(CITIES), company=rng.choice(COMPANIES), food=rng.choice(FOODS))))
        rng.shuffle(session)
        plan.append(session)
    return plan, history


class QuietPlatform:
    """Mnemo's replies go nowhere: this benchmark reads recall, not replies."""

    name = "bench"
    limits = PlatformLimits(max_message_chars=100_000)

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        return ["sent"]

    async def is_admin(self, message: Message) -> bool:
        return False

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        yield


@contextlib.asynccontextmanager
async def learning_core(api_base: str) -> AsyncIterator[Any]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from pymongo import AsyncMongoClient
    from secantus import SecantusDBServer

    from core.build import build
    from core.config import CoreConfig
    from core.memory.embedder import make_embedder

    with tempfile.TemporaryDirectory(prefix="mnemo-learning-") as tmp:
        server = SecantusDBServer(storage_path=os.path.join(tmp, "mongo"))
        server.start()
        client: Any = AsyncMongoClient(server.uri, tz_aware=True)
        try:
            chroma = chromadb.PersistentClient(
                path=os.path.join(tmp, "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
            )
            config = CoreConfig(data_dir=Path(tmp), model="openai/fake-model", llm_api_base=api_base,
                                llm_api_key="sk-bench")
            core = build(config, client, chroma, make_embedder("local"), db_name="learning")
            await core.start(background=False)
            core.register(QuietPlatform())  # type: ignore[arg-type]
            try:
                yield core
            finally:
                await core.close()
        finally:
            await client.close()
            server.stop()


async def run(seed: int, people: int, sessions: int) -> dict[str, Any]:
    from tests.fakes.llm import FakeLLM

    plan, history = generate(seed, people, sessions)
    total = sum(len(s) for s in plan)
    log(f"{people} people, {sessions} sessions, {total} messages (seed {seed})")
    llm = FakeLLM().start()
    start_day = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    right = {"current": 0, "before": 0}
    asked = {"current": 0, "before": 0}
    misses: list[str] = []
    try:
        async with learning_core(llm.api_base) as core:
            started = time.perf_counter()
            n = 0
            for s, session in enumerate(plan):
                day = start_day + timedelta(days=30 * s)
                for i, (name, text) in enumerate(session):
                    n += 1
                    await core.handle(Message(
                        platform="bench", conversation_id="team", message_id=str(n), author_id=name.lower(),
                        author_name=name, text=text, is_dm=False, ts=day + timedelta(minutes=i),
                    ))
                await core.learner.flush(["bench:team"])
                log(f"session {s + 1}: {len(session)} messages; {core.learner.calls} learning calls so far")
            learn_seconds = time.perf_counter() - started
            asked_at = start_day + timedelta(days=30 * sessions)
            for name, topics in history.items():
                for topic, values in topics.items():
                    _state, _change, fact, now_q, before_q = TOPICS[topic]
                    questions = [("current", now_q, values[-1])]
                    if len(values) > 1:
                        questions.append(("before", before_q, values[-2]))
                    for kind, template, value in questions:
                        question = template.format(name=name)
                        expected = fact.format(name=name, v=value)
                        sources = await core.recall(Message(
                            platform="bench", conversation_id="team", message_id=f"q{name}{topic}{kind}",
                            author_id=name.lower(), author_name=name, text=question, is_dm=False, ts=asked_at,
                        ), question, core.config.recall_k)
                        if kind == "current":
                            top = sources[0] if sources else None
                            ok = top is not None and top.fact_about is not None and top.until is None
                        else:
                            top = next((x for x in sources if x.fact_about is not None and x.until), None)
                        ok = top is not None and top.text == expected and (kind == "before" or ok)
                        asked[kind] += 1
                        right[kind] += ok
                        if not ok:
                            misses.append(f"{question} -> {top.text if top else None!r} (want {expected!r})")
            calls, tokens = core.learner.calls, core.learner.tokens
    finally:
        llm.stop()
    for miss in misses[:10]:
        log(f"miss: {miss}")
    questions_total = asked["current"] + asked["before"]
    return {
        "top_source_right": round((right["current"] + right["before"]) / questions_total, 4),
        "current_right": round(right["current"] / asked["current"], 4) if asked["current"] else 0.0,
        "before_right": round(right["before"] / asked["before"], 4) if asked["before"] else 0.0,
        "questions": questions_total,
        "current_questions": asked["current"],
        "before_questions": asked["before"],
        "messages": total,
        "learning_calls_per_100_messages": round(calls / total * 100, 2),
        "learning_tokens_per_100_messages": round(tokens / total * 100, 1),
        "seconds": round(learn_seconds, 1),
        "seed": seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--people", type=int, default=10, help=f"at most {len(NAMES)}")
    parser.add_argument("--sessions", type=int, default=12)
    args = parser.parse_args()
    result = asyncio.run(run(args.seed, min(args.people, len(NAMES)), args.sessions))
    log(f"top source right: {result['top_source_right']} (current {result['current_right']}, "
        f"before {result['before_right']}); learning: {result['learning_calls_per_100_messages']} calls and "
        f"{result['learning_tokens_per_100_messages']} tokens per 100 messages")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
