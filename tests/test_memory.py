"""Retrieval as a user notices it, on the real stores (SecantusDB over the wire, Chroma on disk,
the bundled embedding model): what comes back for a question, and what never does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.engine import Core
from core.media import MediaText
from core.memory.index import MemoryIndex, MemoryItem
from core.memory.query import plan_query
from core.models import Message, PlatformLimits, Reply, Scope

NOW = datetime(2025, 6, 20, 18, 0, tzinfo=UTC)

CHATTER = [
    "Did anyone watch the game last night?",
    "I'm making lasagna tonight, who's in?",
    "The printer on the second floor is jammed again.",
    "Happy birthday Sam!! 🎉",
    "Traffic on the bridge was terrible this morning.",
    "Can someone send the slides from Monday?",
    "I finally finished that 900-page novel.",
    "My cat knocked a plant off the shelf lol",
    "We need more coffee filters in the kitchen.",
    "Anyone up for a run on Saturday?",
    "The new intern starts next week.",
    "It's raining again, of course.",
    "I think I left my umbrella at the cafe.",
    "Reminder: rent is due on the first.",
    "That podcast about octopuses was wild.",
    "Who took my stapler?",
]


class RecordingPlatform:
    name = "test"
    limits = PlatformLimits(max_message_chars=4096)

    def __init__(self) -> None:
        self.sent: list[tuple[Message, Reply]] = []

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        self.sent.append((message, reply))
        return [f"out{len(self.sent)}"]

    async def is_admin(self, message: Message) -> bool:
        return False

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        yield


def said(text: str, *, who: str, when: datetime, mid: str, group: str = "friends") -> Message:
    return Message(
        platform="test",
        conversation_id=group,
        message_id=mid,
        author_id=who.lower(),
        author_name=who,
        text=text,
        is_dm=False,
        ts=when,
    )


async def remember(core: Core, messages: list[Message]) -> None:
    """Through the real pipeline: each message is stored, indexed, and (not addressed) not answered."""
    for message in messages:
        await core.handle(message)


def history(group: str, start: datetime, facts: list[tuple[str, str]]) -> list[Message]:
    """Chatter spread over months with `facts` (author, text) in between."""
    out: list[Message] = []
    when = start
    lines = [("Sam", text) for text in CHATTER]
    for i, fact in enumerate(facts):
        lines.insert(3 + i * 5, fact)
    for i, (who, text) in enumerate(lines):
        when += timedelta(days=6, minutes=i)
        out.append(said(text, who=who, when=when, mid=f"{group}-{i}", group=group))
    return out


async def ask(core: Core, question: str, group: str = "friends", k: int = 3) -> list[str]:
    asker = said(question, who="Robin", when=NOW, mid=f"q-{question}", group=group)
    return [source.text for source in await core.recall(asker, question, k)]


async def test_a_fact_said_months_ago_answers_a_paraphrased_question(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await remember(
        core,
        history(
            "friends",
            NOW - timedelta(days=150),
            [
                ("Alice", "My sister Ana is relocating to Porto in the autumn for a job at a bakery."),
            ],
        ),
    )
    top = await ask(core, "Which city is Alice's sibling moving to?")
    assert "Porto" in top[0], top


async def test_the_bot_reply_cites_what_recall_finds(make_core: Any) -> None:
    core = await make_core()  # no model: retrieval-only replies list the memories found
    platform = RecordingPlatform()
    core.register(platform)
    await remember(
        core,
        history(
            "friends",
            NOW - timedelta(days=120),
            [
                ("Alice", "The wifi password for the cabin is bluefalcon77."),
            ],
        ),
    )
    question = said("@mnemo what's the cabin wifi password?", who="Robin", when=NOW, mid="ask-1")
    question.mentions_bot = True
    await core.handle(question)
    _, reply = platform.sent[-1]
    assert reply.footnotes and "bluefalcon77" in reply.footnotes[0].quote, reply


async def test_the_person_named_in_the_question_is_preferred(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await remember(
        core,
        history(
            "friends",
            NOW - timedelta(days=100),
            [
                ("Alice", "I want to adopt a dog from the shelter this year."),
                ("Bruno", "I want to adopt a cat from the shelter this year."),
            ],
        ),
    )
    top = await ask(core, "What pet does Bruno want to adopt?")
    assert "cat" in top[0], top
    top = await ask(core, "What pet does Alice want to adopt?")
    assert "dog" in top[0], top


async def test_an_answer_is_found_through_the_question_it_answered(make_core: Any) -> None:
    """'Lisbon, for a week!' says nothing about holidays; the message before it does."""
    core = await make_core()
    core.register(RecordingPlatform())
    start = NOW - timedelta(days=90)
    messages = history("friends", start - timedelta(days=200), [])
    messages += [
        said("Alice, where did you go on holiday in the end?", who="Bruno", when=start, mid="h1"),
        said(
            "Lisbon, for a week! Ate way too many pastries.",
            who="Alice",
            when=start + timedelta(minutes=1),
            mid="h2",
        ),
        said("Nice, I have never been there.", who="Bruno", when=start + timedelta(minutes=2), mid="h3"),
    ]
    await remember(core, messages)
    top = await ask(core, "Where did Alice spend her holiday?", k=2)
    assert any("Lisbon" in text for text in top), top


async def test_last_week_means_last_week(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await remember(
        core,
        [
            said(
                "We had dinner at Casa Nostra, the pasta was great.",
                who="Alice",
                when=NOW - timedelta(days=200),
                mid="d1",
            ),
            said(
                "We had dinner at Golden Lotus, the dumplings were great.",
                who="Alice",
                when=NOW - timedelta(days=9),
                mid="d2",
            ),
            *history("friends", NOW - timedelta(days=300), []),
        ],
    )
    assert plan_query("where did we eat last week?", set(), NOW.timestamp()).window is not None
    top = await ask(core, "Where did Alice have dinner last week?")
    assert "Golden Lotus" in top[0], top


async def test_a_search_in_one_scope_never_returns_another_scopes_memory(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await remember(
        core,
        [
            said(
                "Our launch code name is PELICAN.",
                who="Alice",
                when=NOW - timedelta(days=3),
                mid="g1",
                group="team-a",
            )
        ],
    )
    dm = Message(
        platform="test",
        conversation_id="dm-bruno",
        message_id="x1",
        author_id="bruno",
        author_name="Bruno",
        text="My launch code name is HERON, keep it secret.",
        is_dm=True,
        ts=NOW - timedelta(days=2),
    )
    await core.handle(dm)
    await remember(
        core, [said("Lunch at noon?", who="Carla", when=NOW - timedelta(days=1), mid="b1", group="team-b")]
    )
    # Asked in team-b, by the very person whose DM holds the answer: neither other scope leaks.
    asker = said("what is the launch code name?", who="Bruno", when=NOW, mid="q1", group="team-b")
    texts = [s.text for s in await core.recall(asker, asker.text, 10)]
    assert not any("PELICAN" in t or "HERON" in t for t in texts), texts
    # Without the relevance cut-off team-b's one message comes back: still nothing of the others.
    hits = await core.index.search(Scope("group", "test", "team-b"), "launch code name", 10, cutoff=False)
    assert hits and all("PELICAN" not in h.document and "HERON" not in h.document for h in hits)
    # Each scope still finds its own.
    hits = await core.index.search(Scope("group", "test", "team-a"), "launch code name", 10)
    assert "PELICAN" in hits[0].document


async def small_scope(core: Core) -> Scope:
    """A new user's first few memories."""
    await remember(
        core,
        [
            said("My locker code is 4471.", who="Alice", when=NOW - timedelta(days=3), mid="m1", group="new"),
            said(
                "My sister Ana's birthday is on March 3rd.", who="Alice", when=NOW - timedelta(days=2), mid="m2",
                group="new",
            ),
            said("Pasta again for lunch today.", who="Alice", when=NOW - timedelta(days=1), mid="m3", group="new"),
        ],
    )
    return Scope("group", "test", "new")


async def test_a_question_with_nothing_relevant_gets_no_memories(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    scope = await small_scope(core)
    for question in ("What is the capital of France?", "how do I bake sourdough bread?", "who won the match?"):
        assert await core.index.search(scope, question, 10) == [], question
        assert await ask(core, question, group="new", k=10) == [], question
        # The ranking alone always has a best memory: it is the cut-off that says it is not relevant.
        assert await core.index.search(scope, question, 10, cutoff=False), question


async def test_a_relevant_question_still_finds_its_memory_in_a_small_scope(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await small_scope(core)
    for question, expected in (
        ("When is Ana's birthday?", "Ana's birthday is on March 3rd"),
        ("when was alice's sister born?", "Ana's birthday is on March 3rd"),  # no word in common but the name
        ("what's the combination for my gym locker?", "locker code is 4471"),
        ("What did Alice eat at noon?", "Pasta"),
    ):
        top = await ask(core, question, group="new", k=10)
        assert top and expected in top[0], (question, top)


async def test_a_deleted_memory_is_gone_from_word_and_meaning_search(make_core: Any, data_dir: Path) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    secret = said(
        "My locker combination is 4471-zebra.", who="Alice", when=NOW - timedelta(days=40), mid="s1"
    )
    await remember(core, [*history("friends", NOW - timedelta(days=200), []), secret])
    scope = secret.scope
    assert "4471-zebra" in (await core.index.search(scope, "4471-zebra", 3))[0].document  # words
    assert (
        "4471-zebra" in (await core.index.search(scope, "what opens Alice's locker?", 3))[0].document
    )  # meaning
    stored = await core.store.get_message(secret.event_key)
    assert stored is not None
    await core.index.delete(scope, [stored["_id"]])
    for query in ("4471-zebra", "what opens Alice's locker?", "combination"):
        hits = await core.index.search(scope, query, 20)
        assert all(hit.memory_id != stored["_id"] for hit in hits), query
        assert all("4471" not in hit.document for hit in hits), query
    # Another worker on the same Chroma builds its view from Chroma: the memory is gone there too.
    other = MemoryIndex(core.index.chroma, core.index.embedder)
    hits = await other.search(scope, "locker combination 4471-zebra", 20)
    assert all("4471" not in hit.document for hit in hits)


async def test_a_memory_written_by_another_worker_is_found(make_core: Any) -> None:
    core = await make_core()
    core.register(RecordingPlatform())
    await remember(core, history("friends", NOW - timedelta(days=200), []))
    scope = Scope("group", "test", "friends")
    assert await core.index.search(scope, "printer", 3)  # this worker now holds a view of the scope
    other = MemoryIndex(core.index.chroma, core.index.embedder)
    await other.add(
        [
            MemoryItem(
                "m-other",
                scope,
                "The spare key is under the blue flowerpot.",
                "Alice",
                (NOW - timedelta(days=1)).timestamp(),
                conversation_key="test:friends",
            )
        ]
    )
    hits = await core.index.search(scope, "where is the spare key?", 3)
    assert hits[0].memory_id == "m-other"


async def test_bulk_import_stores_and_remembers_like_the_pipeline(make_core: Any) -> None:
    core = await make_core()
    messages = history("imported", NOW - timedelta(days=100), [("Alice", "I'm allergic to peanuts.")])
    photo = said("", who="Bruno", when=NOW - timedelta(days=1), mid="img", group="imported")
    entries: list[tuple[Message, list[MediaText]]] = [(m, []) for m in messages]
    entries += [(photo, [MediaText("image", "a red kayak on a lake at sunset")])]
    assert await core.ingest_history(entries) == len(entries)
    assert await core.ingest_history(entries) == 0  # already stored: nothing twice
    scope = Scope("group", "test", "imported")
    assert await core.index.count(scope) == len(entries)
    stored = await core.store.get_message(photo.event_key)
    assert stored is not None and stored["media_kind"] == "image" and stored["remembered"]
    top = await ask(core, "what is Alice allergic to?", group="imported")
    assert "peanuts" in top[0]
    top = await ask(core, "who has a boat?", group="imported")
    assert any("kayak" in text for text in top), top


async def test_a_large_scope_ranks_from_the_nearest_neighbour_pool(make_core: Any) -> None:
    """Above the exact-scoring limit the semantic candidates come from Chroma's ANN index."""
    core = await make_core()
    messages = history("big", NOW - timedelta(days=200), [("Alice", "I keep my passport in the red folder.")])
    await core.ingest_history([(m, []) for m in messages])
    scope = Scope("group", "test", "big")
    pooled = MemoryIndex(core.index.chroma, core.index.embedder, exact_limit=5)
    exact = MemoryIndex(core.index.chroma, core.index.embedder)
    for question in ("where is the passport kept?", "what travel document is in a folder?"):
        assert "passport" in (await pooled.search(scope, question, 3))[0].document
        pooled_top = (await pooled.search(scope, question, 3))[0].memory_id
        assert pooled_top == (await exact.search(scope, question, 3))[0].memory_id


def test_the_local_embedder_gives_the_reference_models_vectors() -> None:
    """The int8 ONNX model Mnemo runs agrees with the full-precision all-MiniLM-L6-v2
    (vectors computed once with sentence-transformers and kept in tests/data), text by text
    and in which memory is nearest to a question."""
    import numpy as np

    from core.memory.embedder import LocalEmbedder

    fixture = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
    texts, reference = fixture["sentences"], np.asarray(fixture["vectors"], dtype=np.float32)
    ours = LocalEmbedder(batch_size=8, workers=2).encode_sync(texts)

    agreement = np.sum(reference * ours, axis=1)
    assert agreement.mean() >= 0.99, agreement
    assert agreement.min() > 0.95, agreement
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    birthday_question, birthday = texts.index("When is Ana's birthday?"), texts.index("My sister Ana was born on March 3rd.")
    similarities = ours @ ours[birthday_question]
    similarities[birthday_question] = -1
    assert int(np.argmax(similarities)) == birthday
