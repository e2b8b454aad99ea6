"""Search latency and ingest rate as one scope grows (default: to 100,000 memories).

    python bench/scale.py [--max 100000] [--queries 50]

A real Core on real stores (embedded SecantusDB + Chroma PersistentClient in a temp dir)
imports synthetic but realistic group-chat messages (several people, everyday topics, dates
moving forward) into ONE group conversation through the bulk import, and at each checkpoint
times `MemoryIndex.search` (query embedding + ranking) for a set of questions. Progress on
stderr; a table, then one JSON line, on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.locomo import bench_core, cpu_seconds, log, peak_rss_mb, percentile
from core.media import MediaText
from core.models import Message

PEOPLE = [
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emeka",
    "Farah",
    "Gustav",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
]
PLACES = [
    "Lisbon",
    "the lake",
    "grandma's house",
    "the climbing gym",
    "Kyoto",
    "the farmers market",
    "the office",
    "the new ramen place",
    "Berlin",
    "the beach",
    "the library",
    "my cousin's wedding",
    "the dentist",
    "the mountains",
    "a jazz bar",
    "the vet",
    "the conference in Austin",
    "the community garden",
]
ACTIVITIES = [
    "hiking",
    "baking sourdough",
    "learning Spanish",
    "running a half marathon",
    "painting with watercolors",
    "fixing my bike",
    "reading a sci-fi novel",
    "playing chess online",
    "repotting the plants",
    "training the puppy",
    "planning the trip",
    "doing pottery",
    "writing my thesis",
    "playing guitar",
    "volunteering at the shelter",
    "studying for the exam",
    "building a bookshelf",
]
FEELINGS = [
    "so relaxing",
    "exhausting but worth it",
    "honestly the best part of my week",
    "harder than I thought",
    "really fun",
    "a bit stressful",
    "amazing",
    "pretty boring",
    "super rewarding",
]
WHEN = [
    "yesterday",
    "last weekend",
    "this morning",
    "two weeks ago",
    "last month",
    "on Friday",
    "tonight",
    "next Saturday",
    "over the holidays",
    "after work",
]
TEMPLATES = [
    "I went to {place} {when}, it was {feeling}.",
    "{when} I started {activity}. It's {feeling}!",
    "Has anyone tried {activity}? I'm thinking about it after {place}.",
    "Reminder: we meet at {place} {when}, don't be late 😅",
    "My {relative} got me into {activity}, we did it {when} near {place}.",
    "lol that's exactly what happened to me at {place}",
    "Can someone send me the photos from {place}?",
    "I'm so tired, {activity} {when} was {feeling}.",
    "Thanks {person}! That means a lot.",
    "Did you finish {activity} yet? You said {when} you would.",
    "We should all go to {place} together sometime, it's {feeling}.",
    "{person}, how was {place}?",
]
RELATIVES = ["sister", "brother", "mom", "dad", "cousin", "roommate", "neighbor", "boss"]
QUESTIONS = [
    "When did {person} go to {place}?",
    "What did {person} start doing?",
    "Who is into {activity}?",
    "Where are we meeting?",
    "What did {person}'s {relative} get them into?",
    "What did {person} say about {place}?",
    "Has anyone tried {activity}?",
    "What happened last weekend?",
]


def synthetic_messages(count: int, seed: int = 7, start_index: int = 0) -> list[str]:
    rng = random.Random(seed + start_index)
    out = []
    for _ in range(count):
        out.append(
            rng.choice(TEMPLATES).format(
                place=rng.choice(PLACES),
                when=rng.choice(WHEN),
                feeling=rng.choice(FEELINGS),
                activity=rng.choice(ACTIVITIES),
                person=rng.choice(PEOPLE),
                relative=rng.choice(RELATIVES),
            )
        )
    return out


def synthetic_questions(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [
        rng.choice(QUESTIONS).format(
            place=rng.choice(PLACES),
            activity=rng.choice(ACTIVITIES),
            person=rng.choice(PEOPLE),
            relative=rng.choice(RELATIVES),
        )
        for _ in range(count)
    ]


async def run(maximum: int, queries: int) -> list[dict[str, Any]]:
    checkpoints = [c for c in (1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000) if c < maximum] + [
        maximum
    ]
    questions = synthetic_questions(queries)
    rows: list[dict[str, Any]] = []
    clock = datetime(2024, 1, 1, 9, tzinfo=UTC)
    rng = random.Random(3)
    size = 0
    async with bench_core("scale") as core:
        index = core.index
        for checkpoint in checkpoints:
            texts = synthetic_messages(checkpoint - size, start_index=size)
            entries: list[tuple[Message, list[MediaText]]] = []
            for n, text in enumerate(texts, start=size):
                # Bursts of conversation, then a quiet gap of hours to days.
                clock += (
                    timedelta(seconds=rng.randint(5, 90))
                    if rng.random() > 0.03
                    else timedelta(hours=rng.randint(3, 60))
                )
                author = rng.choice(PEOPLE)
                entries.append(
                    (
                        Message(
                            platform="bench",
                            conversation_id="big-group",
                            message_id=str(n),
                            author_id=author.lower(),
                            author_name=author,
                            text=text,
                            is_dm=False,
                            ts=clock,
                        ),
                        [],
                    )
                )
            started, cpu_started = time.perf_counter(), cpu_seconds()
            for at in range(0, len(entries), 2000):
                await core.ingest_history(entries[at : at + 2000])
                # A search between imports keeps the scope's view live, as a running bot does.
                await index.search(entries[0][0].scope, questions[0], 10)
                log(f"  {size + min(at + 2000, len(entries))} memories")
            ingest_rate = len(entries) / (time.perf_counter() - started)
            ingest_cpu_rate = len(entries) / max(cpu_seconds() - cpu_started, 1e-9)
            size = checkpoint
            scope = entries[0][0].scope
            await index.search(scope, questions[0], 10)  # the view is built once per process
            latencies = []
            cpu_before = cpu_seconds()
            for question in questions:
                t0 = time.perf_counter()
                # The whole ranking, every time: the relevance cut-off would only ever return sooner.
                await index.search(scope, question, 10, now=clock.timestamp(), cutoff=False)
                latencies.append((time.perf_counter() - t0) * 1000)
            search_cpu_ms = (cpu_seconds() - cpu_before) / len(questions) * 1000
            row = {
                "memories": await index.count(scope),
                "ingest_msgs_per_s": round(ingest_rate, 1),
                "ingest_msgs_per_cpu_s": round(ingest_cpu_rate, 1),
                "search_cpu_ms": round(search_cpu_ms, 2),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "search_p50_ms": round(percentile(latencies, 0.5), 2),
                "search_p95_ms": round(percentile(latencies, 0.95), 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
            rows.append(row)
            log(f"checkpoint {row}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max", type=int, default=100_000, help="memories in the scope at the end")
    parser.add_argument("--queries", type=int, default=50, help="searches timed at each checkpoint")
    args = parser.parse_args()
    rows = asyncio.run(run(args.max, args.queries))
    print(
        f"{'memories':>9} {'ingest msg/s':>13} {'msg/CPU-s':>10} {'search p50 ms':>14} {'search p95 ms':>14} "
        f"{'CPU-ms/search':>14} {'peak RSS MB':>12} {'load':>5}"
    )
    for row in rows:
        print(
            f"{row['memories']:>9} {row['ingest_msgs_per_s']:>13} {row['ingest_msgs_per_cpu_s']:>10} "
            f"{row['search_p50_ms']:>14} {row['search_p95_ms']:>14} {row['search_cpu_ms']:>14} "
            f"{row['peak_rss_mb']:>12} {row['load_avg_1m']:>5}"
        )
    print(json.dumps({"rows": rows}), flush=True)


if __name__ == "__main__":
    main()
