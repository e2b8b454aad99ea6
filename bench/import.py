"""History import rate: a synthetic Telegram Desktop export through `mnemo import`'s own path.

    python bench/import.py                    # 100,000 messages (several minutes on 2 cores)
    python bench/import.py --messages 5000    # quicker

Writes a `result.json` (one supergroup, 40 people, everyday chat of realistic length) into a
temp dir, then runs what `mnemo import telegram` runs on the embedded defaults (SecantusDB,
Chroma PersistentClient, the local ONNX embedder) in a temp data dir: parse and check the whole
file, then the chunked bulk import. Start-up (model load, stores) is timed apart. A rerun of
the same export is timed too (everything already imported: it must be quick and add nothing).
Progress on stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.locomo import cpu_seconds, log, peak_rss_mb

SUBJECTS = ["the offsite", "the release", "dinner on Friday", "the new intern", "the budget", "the flat viewing",
            "the book club", "the marathon", "the server migration", "the dentist", "grandma's birthday", "the van"]
SAYINGS = [
    "I think {s} moved to next Tuesday, can someone confirm?",
    "Reminder: {s} needs a decision by the end of the week.",
    "Just talked to Sam about {s}; he'll bring the documents.",
    "Has anyone heard back about {s}? I'm still waiting on an answer.",
    "For {s} we agreed on the small room on the third floor, 10 am.",
    "Honestly {s} went better than expected 🙂",
    "Can we move {s} to the shared calendar so nobody forgets?",
    "I booked {s} — confirmation number is {n}.",
]


def write_export(folder: Path, count: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    people = [(1000 + i, f"Person {i}") for i in range(40)]
    at = 1_700_000_000
    messages = []
    for i in range(count):
        at += rng.choice((5, 20, 60, 300, 3600))
        user_id, name = rng.choice(people)
        text = rng.choice(SAYINGS).format(s=rng.choice(SUBJECTS), n=rng.randint(1000, 99999))
        messages.append({"id": i + 1, "type": "message", "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)),
                         "date_unixtime": str(at), "from": name, "from_id": f"user{user_id}", "text": text,
                         "text_entities": [{"type": "plain", "text": text}]})
    path = folder / "result.json"
    path.write_text(json.dumps({"name": "Bench group", "type": "private_supergroup", "id": 4242, "messages": messages},
                               ensure_ascii=False))
    return path


async def run(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mnemo-import-bench-") as tmp:
        root = Path(tmp)
        log(f"writing a {count:,}-message export")
        export = write_export(root, count)
        os.environ["MNEMO_DATA_DIR"] = str(root / "data")
        for variable in ("MONGODB_URI", "CHROMA_URL", "MNEMO_EMBEDDING_MODEL"):
            os.environ.pop(variable, None)
        from bot.app import open_core
        from bot.config import load_settings
        from bot.importer import import_history, parse

        settings = load_settings()
        started = time.monotonic()
        async with open_core(settings, background=False) as core:
            startup = time.monotonic() - started
            log(f"stores and model ready in {startup:.1f} s")
            began, cpu1 = time.monotonic(), cpu_seconds()
            history = await asyncio.to_thread(parse, "telegram", export)
            parsed = time.monotonic() - began
            outcome = await import_history(core, settings, "telegram", history, sys.stderr)
            elapsed, cpu = time.monotonic() - began, cpu_seconds() - cpu1
            assert outcome.imported == count, outcome.summary()
            log("rerun (everything already imported)")
            again = time.monotonic()
            history = await asyncio.to_thread(parse, "telegram", export)
            repeat = await import_history(core, settings, "telegram", history, io.StringIO())
            rerun = time.monotonic() - again
            assert repeat.imported == 0 and repeat.already == count, repeat.summary()
        return {
            "messages": count,
            "msg_per_s": round(count / elapsed, 1),
            "msg_per_cpu_s": round(count / cpu, 1),
            "import_s": round(elapsed, 1),
            "parse_s": round(parsed, 2),
            "startup_s": round(startup, 1),
            "rerun_s": round(rerun, 1),
            "peak_rss_mb": round(peak_rss_mb()),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="how many messages (default 100,000)")
    args = parser.parse_args()
    result = asyncio.run(run(args.messages))
    print(f"{result['messages']:,} messages imported in {result['import_s']} s: {result['msg_per_s']} msg/s "
          f"({result['msg_per_cpu_s']} msg per CPU-second), peak RSS {result['peak_rss_mb']} MB, "
          f"rerun {result['rerun_s']} s, load {result['load_avg_1m']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
