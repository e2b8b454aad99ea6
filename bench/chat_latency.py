"""Cold start to first reply, per-message latency and peak RSS of `mnemo chat`.

Runs the real CLI as a subprocess against a loopback OpenAI-compatible model server
(tests/fakes/llm.py) on the embedded stores, writing one line at a time and timing each reply.

    .venv/bin/python bench/chat_latency.py [--messages 60] [--history 20000]

`--history N` first imports a synthetic N-message Telegram group (bench/import.py's export,
through `mnemo import`'s own path) into the data dir of the per-message run, so the figures
show whether a message's cost grows with what is already stored.

Progress on stderr; the last stdout line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.llm import FakeLLM

FACTS = [
    "my sister {n} loves orchids and lives in Porto",
    "the team offsite number {n} is in June, bring laptops",
    "remember that locker {n} has the spare keys",
    "{n} is the number of the bus I take to work",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cold_start(env: dict[str, str]) -> float:
    """Seconds from launching `mnemo chat` to its first reply on stdout."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "chat", "--user", "bench"], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write("hello, I am the benchmark\n")
    proc.stdin.close()
    proc.stdout.readline()
    elapsed = time.monotonic() - started
    proc.wait(60)
    return elapsed


async def import_history(core: Any, settings: Any, count: int, folder: Path) -> None:
    """`count` messages of another conversation, stored and indexed as `mnemo import` does."""
    import importlib

    from bot.importer import import_history as run_import
    from bot.importer import parse

    # `import` is a keyword, so bench/import.py is imported by name.
    export = importlib.import_module("bench.import").write_export(folder, count)
    history = await asyncio.to_thread(parse, "telegram", export)
    outcome = await run_import(core, settings, "telegram", history, sys.stderr)
    assert outcome.imported == count, outcome.summary()


async def per_message(env: dict[str, str], count: int, history: int = 0) -> list[float]:
    """In-process: the real console adapter and pipeline, timing each message to its reply."""
    import io

    from adapters.console import ConsoleAdapter
    from bot.app import open_core
    from bot.config import load_settings

    os.environ.update(env)
    if history:
        # Imported without a model: the history is stored and indexed, not learned from
        # (learning 20,000 messages through the loopback model is not what is measured).
        model = os.environ.pop("MNEMO_MODEL", None)
        print(f"importing a {history:,}-message history first ...", file=sys.stderr)
        settings = load_settings()
        async with open_core(settings, background=False) as core:
            await import_history(core, settings, history, Path(env["MNEMO_DATA_DIR"]).parent)
        if model is not None:
            os.environ["MNEMO_MODEL"] = model
    latencies: list[float] = []
    async with open_core(load_settings(), background=False) as core:
        console = ConsoleAdapter(core, user="bench", out=io.StringIO())
        core.register(console)
        for i in range(count):
            line = FACTS[i % len(FACTS)].format(n=i) if i % 2 == 0 else f"what do you remember about {i - 1}?"
            message = console.to_message(line)
            assert message is not None
            sent = time.monotonic()
            await core.handle(message)
            latencies.append(time.monotonic() - sent)
            print(f"[{i + 1}/{count}] {1000 * latencies[-1]:.0f} ms", file=sys.stderr)
    return latencies[1:]  # the first one loads the embedding model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--history", type=int, default=0, help="messages imported before timing (default none)")
    args = parser.parse_args()
    llm = FakeLLM().start()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, **llm.env(), "MNEMO_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1"}
        env.pop("MONGODB_URI", None)
        env.pop("CHROMA_URL", None)
        print("cold start of mnemo chat ...", file=sys.stderr)
        cold = cold_start(env)
        child_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        latencies = asyncio.run(per_message({**env, "MNEMO_DATA_DIR": os.path.join(data_dir, "inproc")},
                                            args.messages, args.history))
    llm.stop()
    result = {
        "cold_start_to_first_reply_s": round(cold, 2),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "messages": args.messages,
        "history": args.history,
        "peak_rss_mb_cli": round(child_rss_mb, 1),
        "peak_rss_mb_inprocess": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
