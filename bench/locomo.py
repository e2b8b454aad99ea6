"""LoCoMo retrieval benchmark through the production memory path.

    python bench/locomo.py --data ../shared/data/locomo-dev.json [--limit N] [--k 10] [--foreign] [--no-cutoff]

For each conversation: a real Core on real stores (embedded SecantusDB + Chroma
PersistentClient in a temp dir) imports every turn as a message of one group conversation
(author = speaker, timestamp = the session's date and time, an image turn's `blip_caption` as
the image's description). Then each question of categories 1-4 is asked the way a reply
recalls memories (`Core.recall`, query time after the last session) and the top k are scored
against the evidence turns: Recall@5, Recall@10, MRR, overall and per category.

The relevance cut-off (a question with nothing relevant gets no memories) is on, as in the
product; `--no-cutoff` ranks without it. `--foreign` measures the cut-off: each conversation is
also asked the other conversations' questions, which must get nothing (`foreign_abstained`:
the share that did), and its own are asked with and without the cut-off (`recall@10`,
`recall@10_no_cutoff`).

With `--facts observations`, the dataset's `observation` entries (LLM-written facts about each
speaker, with their evidence turns) are applied to the fact store exactly as the learning
model's `record_facts` answers would be (core.learning.Learner.apply), and recalled with the
messages; a retrieved fact counts as retrieving its source turns.

Progress goes to stderr; the last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.media import MediaText
from core.models import Attachment, Message

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
PLATFORM = "bench"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the data --------------------------------------------------------------------------------


def parse_session_time(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> an aware datetime (UTC)."""
    cleaned = " ".join(text.replace(",", " ").split())
    return datetime.strptime(cleaned, "%I:%M %p on %d %B %Y").replace(tzinfo=UTC)


_EVIDENCE = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")


def normalize_evidence(raw: list[str]) -> list[str]:
    """'D8:6; D9:17' -> D8:6, D9:17; 'D30:05' -> D30:5; 'D:11:26' -> D11:26."""
    found: list[str] = []
    for item in raw:
        for session, turn in _EVIDENCE.findall(str(item)):
            dia_id = f"D{int(session)}:{int(turn)}"
            if dia_id not in found:
                found.append(dia_id)
    return found


@dataclass
class Sample:
    sample_id: str
    turns: list[tuple[Message, list[MediaText]]]
    questions: list[dict[str, Any]]
    last_time: datetime


def load_samples(path: Path, limit: int | None) -> list[Sample]:
    raw = json.loads(path.read_text())
    samples = []
    for entry in raw[:limit] if limit else raw:
        conversation = entry["conversation"]
        turns: list[tuple[Message, list[MediaText]]] = []
        last = datetime.min.replace(tzinfo=UTC)
        n = 1
        while f"session_{n}" in conversation:
            started = parse_session_time(conversation[f"session_{n}_date_time"])
            for i, turn in enumerate(conversation[f"session_{n}"]):
                # A second per turn keeps the order of a session's turns (real messages never share a time).
                ts = started + timedelta(seconds=i)
                media: list[MediaText] = []
                attachments: list[Attachment] = []
                if turn.get("blip_caption"):
                    media = [MediaText("image", turn["blip_caption"])]
                    attachments = [
                        Attachment(
                            "image",
                            Path(str(turn.get("img_url") or "photo.jpg")).name or "photo.jpg",
                            "image/jpeg",
                        )
                    ]
                message = Message(
                    platform=PLATFORM,
                    conversation_id=entry["sample_id"],
                    message_id=turn["dia_id"],
                    author_id=turn["speaker"].lower(),
                    author_name=turn["speaker"],
                    text=turn.get("text", ""),
                    is_dm=False,
                    ts=ts,
                    attachments=attachments,
                )
                turns.append((message, media))
                last = max(last, ts)
            n += 1
        samples.append(Sample(entry["sample_id"], turns, entry["qa"], last))
    return samples


# -- scoring -------------------------------------------------------------------------------


@dataclass
class Scores:
    recall5: list[float] = field(default_factory=list)
    recall10: list[float] = field(default_factory=list)
    rr: list[float] = field(default_factory=list)

    def add(self, ranked: list[str], evidence: set[str]) -> None:
        self.recall5.append(len(evidence & set(ranked[:5])) / len(evidence))
        self.recall10.append(len(evidence & set(ranked[:10])) / len(evidence))
        first = next((rank for rank, dia_id in enumerate(ranked, 1) if dia_id in evidence), None)
        self.rr.append(1.0 / first if first else 0.0)

    def add_groups(self, ranked: list[set[str]], evidence: set[str]) -> None:
        """Like `add`, where each retrieved memory stands for a set of turns (a fact: its sources)."""
        def covered(k: int) -> set[str]:
            return set().union(*ranked[:k]) if ranked else set()

        self.recall5.append(len(evidence & covered(5)) / len(evidence))
        self.recall10.append(len(evidence & covered(10)) / len(evidence))
        first = next((rank for rank, turns in enumerate(ranked, 1) if turns & evidence), None)
        self.rr.append(1.0 / first if first else 0.0)

    def summary(self) -> dict[str, float]:
        mean = statistics.fmean
        return {
            "n": len(self.rr),
            "recall@5": round(mean(self.recall5), 4) if self.rr else 0.0,
            "recall@10": round(mean(self.recall10), 4) if self.rr else 0.0,
            "mrr": round(mean(self.rr), 4) if self.rr else 0.0,
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cpu_seconds() -> float:
    """CPU time of this process (all threads, the embedded database's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- the run -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bench_core(name: str) -> AsyncIterator[Any]:
    """A real Core on real stores in a temp dir: an embedded SecantusDB, a Chroma
    PersistentClient and the local embedder, warmed up (model load is start-up, not ingest)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from pymongo import AsyncMongoClient
    from secantus import SecantusDBServer

    from core.build import build
    from core.config import CoreConfig
    from core.memory.embedder import make_embedder

    with tempfile.TemporaryDirectory(prefix=f"mnemo-{name}-") as tmp:
        server = SecantusDBServer(storage_path=os.path.join(tmp, "mongo"))
        server.start()
        client: Any = AsyncMongoClient(server.uri, tz_aware=True)
        try:
            chroma = chromadb.PersistentClient(
                path=os.path.join(tmp, "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
            )
            embedder = make_embedder("local")
            warm_up = getattr(embedder, "warm_up", None)
            if warm_up is not None:
                await warm_up()
            core = build(CoreConfig(data_dir=Path(tmp)), client, chroma, embedder, db_name=name)
            await core.start(background=False)
            try:
                yield core
            finally:
                await core.close()
        finally:
            await client.close()
            server.stop()


@dataclass
class Loaded:
    """One conversation in memory: where it lives and how its memories map to LoCoMo turns."""

    sample: Sample
    scope: Any
    turn_of: dict[str, str]  # memory id -> dia_id
    asked_at: datetime  # a day after the last session

    def questions(self) -> list[tuple[int, str, set[str]]]:
        """(category, question, evidence turns) of categories 1-4 with evidence in memory."""
        valid = set(self.turn_of.values())
        found = []
        for qa in self.sample.questions:
            category = qa.get("category")
            if category not in CATEGORIES:
                continue
            evidence = {e for e in normalize_evidence(qa.get("evidence", [])) if e in valid}
            if evidence:
                found.append((category, str(qa["question"]), evidence))
        return found


@dataclass
class Timings:
    search_ms: list[float] = field(default_factory=list)
    recall_ms: list[float] = field(default_factory=list)
    search_cpu: float = 0.0
    ingest_seconds: float = 0.0
    ingest_cpu: float = 0.0
    ingested: int = 0


async def load(core: Any, sample: Sample, timings: Timings) -> Loaded:
    started, cpu_started = time.perf_counter(), cpu_seconds()
    stored = await core.ingest_history(sample.turns)
    elapsed = time.perf_counter() - started
    timings.ingest_cpu += cpu_seconds() - cpu_started
    timings.ingest_seconds += elapsed
    timings.ingested += stored
    log(f"{sample.sample_id}: ingested {stored} turns in {elapsed:.1f}s ({stored / elapsed:.0f} msg/s)")
    ids = {message.event_key: message.message_id for message, _ in sample.turns}
    turn_of = {
        doc["_id"]: ids[doc["key"]]
        async for doc in core.store.messages.find(
            {"conversation_key": f"{PLATFORM}:{sample.sample_id}"}, {"key": 1}
        )
    }
    return Loaded(sample, sample.turns[0][0].scope, turn_of, sample.last_time + timedelta(days=1))


async def ask(core: Any, loaded: Loaded, question: str, k: int, timings: Timings | None = None) -> list[str]:
    """The LoCoMo turns a reply to `question`, asked in `loaded`'s conversation, would cite
    (`Core.recall`, as the bot recalls); with `timings`, the bare search is timed too."""
    message = Message(
        platform=PLATFORM,
        conversation_id=loaded.sample.sample_id,
        message_id="question",  # never stored: only recalled for
        author_id="asker",
        author_name="asker",
        text=question,
        is_dm=False,
        ts=loaded.asked_at,
    )
    if timings is not None:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        await core.index.search(loaded.scope, question, k, now=loaded.asked_at.timestamp())
        timings.search_ms.append((time.perf_counter() - t0) * 1000)
        timings.search_cpu += cpu_seconds() - cpu0
    t0 = time.perf_counter()
    sources = await core.recall(message, question, k)
    if timings is not None:
        timings.recall_ms.append((time.perf_counter() - t0) * 1000)
    return [loaded.turn_of[s.memory_id] for s in sources if s.memory_id in loaded.turn_of]


# -- --facts observations ------------------------------------------------------------------


async def learn_observations(core: Any, loaded: Loaded, raw: dict[str, Any]) -> int:
    """Apply a sample's `observation` entries as the learning model's answers: one batch per
    session, facts about each speaker with their evidence turns as sources."""
    key = f"{PLATFORM}:{loaded.sample.sample_id}"
    turns = {doc["message_id"]: doc async for doc in core.store.messages.find({"conversation_key": key})}
    added = 0
    for _, by_speaker in sorted((raw.get("observation") or {}).items(), key=lambda kv: _session_no(kv[0])):
        told: list[dict[str, Any]] = []
        ops = []
        for speaker, entries in (by_speaker or {}).items():
            for entry in entries:
                text, evidence = entry[0], entry[1] if len(entry) > 1 else []
                numbers = []
                for dia_id in normalize_evidence([evidence] if isinstance(evidence, str) else list(evidence)):
                    if dia_id in turns:
                        if turns[dia_id] not in told:
                            told.append(turns[dia_id])
                        numbers.append(told.index(turns[dia_id]) + 1)
                ops.append({"op": "add", "text": text, "about": speaker, "sources": numbers})
        if told:
            added += await core.learner.apply(key, told[0]["scope"], [], told, ops)
    return added


def _session_no(name: str) -> int:
    found = re.search(r"\d+", name)
    return int(found.group()) if found else 0


async def ask_turn_groups(core: Any, loaded: Loaded, question: str, k: int) -> list[set[str]]:
    """Like `ask`, each recalled memory as the turns it stands for (a fact: its source turns)."""
    message = Message(platform=PLATFORM, conversation_id=loaded.sample.sample_id, message_id="question",
                      author_id="asker", author_name="asker", text=question, is_dm=False, ts=loaded.asked_at)
    groups = []
    for source in await core.recall(message, question, k):
        if source.memory_id in loaded.turn_of:
            groups.append({loaded.turn_of[source.memory_id]})
            continue
        fact = (await core.facts.by_ids([source.memory_id], [message.scope])).get(source.memory_id)
        groups.append({loaded.turn_of[s] for s in (fact or {}).get("sources", []) if s in loaded.turn_of})
    return groups


async def run(
    data: Path, limit: int | None, k: int, cutoff: bool = True, foreign: bool = False, facts: str | None = None
) -> dict[str, Any]:
    """Each conversation's own questions (cut-off as given); with `foreign`, each conversation
    is also asked every other conversation's questions (cut-off on), and the own questions are
    asked both with the cut-off and without it."""
    samples = load_samples(data, limit)
    log(f"{len(samples)} conversations, {sum(len(s.turns) for s in samples)} turns")
    overall, per_category = Scores(), {c: Scores() for c in CATEGORIES}
    without_cutoff = Scores()
    foreign_asked = foreign_abstained = 0
    timings = Timings()
    async with bench_core("locomo") as core:
        loaded = [await load(core, sample, timings) for sample in samples]
        if facts == "observations":
            raw = {entry["sample_id"]: entry for entry in json.loads(data.read_text())}
            for here in loaded:
                learned = await learn_observations(core, here, raw[here.sample.sample_id])
                log(f"{here.sample.sample_id}: {learned} facts from observations")
        for here in loaded:
            core.index.relevance_cutoff = cutoff or foreign
            asked = 0
            for category, question, evidence in here.questions():
                if facts:
                    groups = await ask_turn_groups(core, here, question, k)
                    overall.add_groups(groups, evidence)
                    per_category[category].add_groups(groups, evidence)
                    asked += 1
                    continue
                ranked = await ask(core, here, question, k, timings)
                overall.add(ranked, evidence)
                per_category[category].add(ranked, evidence)
                asked += 1
                if foreign:
                    core.index.relevance_cutoff = False
                    without_cutoff.add(await ask(core, here, question, k), evidence)
                    core.index.relevance_cutoff = True
            log(f"{here.sample.sample_id}: {asked} questions; so far {overall.summary()}")
            if foreign:
                for other in loaded:
                    if other is here:
                        continue
                    for _, question, _ in other.questions():
                        foreign_asked += 1
                        foreign_abstained += not await ask(core, here, question, k)
                log(f"{here.sample.sample_id}: so far {foreign_abstained}/{foreign_asked} foreign questions got nothing")
    result: dict[str, Any] = {}
    if foreign:
        result["foreign_abstained"] = round(foreign_abstained / foreign_asked, 4) if foreign_asked else 0.0
        result["foreign_questions"] = foreign_asked
        result["recall@10_no_cutoff"] = without_cutoff.summary()["recall@10"]
    result.update(overall.summary())
    ingested, ingest_seconds, ingest_cpu = timings.ingested, timings.ingest_seconds, timings.ingest_cpu
    search_ms, recall_ms = timings.search_ms, timings.recall_ms
    result.update(
        {
            "per_category": {CATEGORIES[c]: s.summary() for c, s in per_category.items()},
            "cutoff": cutoff or foreign,
            "conversations": len(samples),
            "messages": ingested,
            "ingest_msgs_per_s": round(ingested / ingest_seconds, 1) if ingest_seconds else 0.0,
            "search_p50_ms": round(percentile(search_ms, 0.5), 2),
            "search_p95_ms": round(percentile(search_ms, 0.95), 2),
            "recall_p50_ms": round(percentile(recall_ms, 0.5), 2),
            "recall_p95_ms": round(percentile(recall_ms, 0.95), 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            # The machine may be shared: CPU cost per unit of work, and the load while measuring.
            "ingest_msgs_per_cpu_s": round(ingested / ingest_cpu, 1) if ingest_cpu else 0.0,
            "search_cpu_ms": round(timings.search_cpu / len(search_ms) * 1000, 2) if search_ms else 0.0,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "k": k,
        }
    )
    return result


def print_table(result: dict[str, Any]) -> None:
    log("")
    if "foreign_abstained" in result:
        log(
            f"foreign questions answered with no sources: {result['foreign_abstained']:.3f} "
            f"of {result['foreign_questions']}; own Recall@10 {result['recall@10']:.3f} with the cut-off, "
            f"{result['recall@10_no_cutoff']:.3f} without"
        )
    log(f"{'category':<12} {'n':>5} {'R@5':>7} {'R@10':>7} {'MRR':>7}")
    for name, row in [*result["per_category"].items(), ("all (1-4)", result)]:
        log(f"{name:<12} {row['n']:>5} {row['recall@5']:>7.3f} {row['recall@10']:>7.3f} {row['mrr']:>7.3f}")
    log(
        f"ingest {result['ingest_msgs_per_s']} msg/s; search p50 {result['search_p50_ms']} ms, "
        f"p95 {result['search_p95_ms']} ms; recall (search + MongoDB) p95 {result['recall_p95_ms']} ms; "
        f"peak RSS {result['peak_rss_mb']} MB"
    )
    log(
        f"CPU cost: {result['ingest_msgs_per_cpu_s']} msg per CPU-second, {result['search_cpu_ms']} CPU-ms per "
        f"search; load average {result['load_avg_1m']} on {result['cpus']} CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a LoCoMo-format JSON file")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--k", type=int, default=10, help="memories retrieved per question (>= 10)")
    parser.add_argument(
        "--no-cutoff", action="store_true", help="rank without the relevance cut-off (every question gets k memories)"
    )
    parser.add_argument(
        "--foreign",
        action="store_true",
        help="also ask each conversation the other conversations' questions (they must get nothing)",
    )
    parser.add_argument("--facts", choices=["observations"], default=None,
                        help="also learn the dataset's observations as facts (scored by their source turns)")
    args = parser.parse_args()
    result = asyncio.run(run(args.data, args.limit, max(args.k, 10), not args.no_cutoff, args.foreign, args.facts))
    if args.facts:
        result["facts"] = args.facts
    print_table(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
