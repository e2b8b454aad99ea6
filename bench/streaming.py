"""Streamed answers on Telegram: time to first visible text, time to the final text, and
platform calls per reply, in private chats (drafts) and groups (edits), plus a run where
edits meet 429s.

The real aiogram Bot against the loopback Bot API (tests/fakes/telegram.py), a loopback model
that streams each answer over ~6 s (tests/fakes/llm.py), real embedded stores.

    .venv/bin/python bench/streaming.py [--replies 3]

Progress on stderr; the last stdout line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.fakes.llm import FakeLLM, grounded_answer
from tests.fakes.telegram import BOT_USERNAME, TOKEN, FakeTelegram, mention_entity, private_chat, supergroup, user

FACT = "The spare key number {n} is under the blue flower pot by the door"
FILLER = ("I hope that helps you get in without waiting for anyone. If it is not there, ask the neighbours, "
          "they were given a copy last spring when the locks were changed.")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def wait_for(check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise TimeoutError("the bench waited too long")


def calls(fake: FakeTelegram, method: str, chat: int, since: float, ok: bool = True) -> list[Any]:
    return [c for c in fake.calls if c.method == method and c.params.get("chat_id") == chat and c.at >= since
            and (c.status == 200 or not ok)]


async def one_reply(fake: FakeTelegram, chat: dict[str, Any], who: dict[str, Any], n: int) -> dict[str, float]:
    group = chat["id"] < 0
    text = f"@{BOT_USERNAME} where is spare key {n}?" if group else f"where is spare key {n}?"
    entities = [mention_entity(text, f"@{BOT_USERNAME}")] if group else None
    asked = time.monotonic()
    fake.push(fake.message(chat, who, text, entities=entities))
    if group:
        # The footnotes arrive with the final text only (a preview may show "[1]" already).
        await wait_for(lambda: "[1] Sam" in "".join(fake.visible_texts(chat["id"])))
        await asyncio.sleep(0.5)
        posts = calls(fake, "sendMessage", chat["id"], asked)
        edits = calls(fake, "editMessageText", chat["id"], asked)
        first, final = posts[0].at, (edits or posts)[-1].at
        updates = len(posts) + len(edits)
    else:
        final_calls = await wait_for(lambda: calls(fake, "sendMessage", chat["id"], asked))
        drafts = calls(fake, "sendMessageDraft", chat["id"], asked)
        first, final = (drafts[0].at if drafts else final_calls[0].at), final_calls[0].at
        updates = len(drafts) + len(final_calls)
    return {"first_visible_s": first - asked, "final_s": final - asked, "calls": updates}


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}


async def run(replies: int) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from pymongo import AsyncMongoClient
    from secantus import SecantusDBServer

    from adapters.telegram import TelegramAdapter
    from core.build import build
    from core.config import CoreConfig
    from core.memory.embedder import make_embedder

    llm = FakeLLM().start()
    llm.responder = lambda messages: f"{grounded_answer(messages)} {FILLER}"
    llm.stream_chunk_delay_s = 0.5  # 12 chunks: ~6 s from the first token to the last
    fake = FakeTelegram().start()
    with tempfile.TemporaryDirectory(prefix="mnemo-stream-") as tmp:
        server = SecantusDBServer(storage_path=os.path.join(tmp, "mongo"))
        server.start()
        client: Any = AsyncMongoClient(server.uri, tz_aware=True)
        chroma = chromadb.PersistentClient(path=os.path.join(tmp, "chroma"),
                                           settings=ChromaSettings(anonymized_telemetry=False))
        config = CoreConfig(data_dir=Path(tmp), model="openai/fake-model", llm_api_base=llm.api_base,
                            llm_api_key="sk-bench")
        core = build(config, client, chroma, make_embedder("local"), db_name="bench")
        await core.start(background=False)
        adapter = TelegramAdapter(core, token=TOKEN, api_base=fake.api_base, poll_timeout_s=1)
        core.register(adapter)
        task = asyncio.create_task(adapter.run())
        try:
            await wait_for(lambda: adapter.me is not None)
            figures: dict[str, Any] = {}
            for kind in ("private", "group", "group_429"):
                rows = []
                for n in range(replies):
                    who = user(600 + len(figures) * 100 + n, "Sam")
                    chat_id = -1003000000000 - len(figures) * 1000 - n  # a chat of its own per reply
                    chat = private_chat(who) if kind == "private" else supergroup(chat_id, "Bench")
                    before = len(fake.sent_messages(chat["id"]))
                    fake.push(fake.message(chat, who, FACT.format(n=n)))
                    if kind == "private":  # acknowledged (itself an answer): wait for it
                        await wait_for(lambda c=chat, b=before: len(fake.sent_messages(c["id"])) > b, 300)
                    if kind == "group_429":
                        for _ in range(3):
                            fake.rate_limit_next("editMessageText", 1)
                    rows.append(await one_reply(fake, chat, who, n))
                    if kind == "group_429":
                        shown = fake.visible_texts(chat["id"])
                        rows[-1]["complete_once"] = float(len(shown) == 1 and FILLER in shown[0] and "[1] Sam" in shown[0])
                    log(f"{kind} {n + 1}/{replies}: {rows[-1]}")
                figures[kind] = summary(rows)
            return figures
        finally:
            await adapter.stop()
            await task
            await core.close()
            await client.close()
            server.stop()
            fake.stop()
            llm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=3, help="streamed replies per kind of chat")
    args = parser.parse_args()
    figures = asyncio.run(run(args.replies))
    print(json.dumps({"replies_per_kind": args.replies, "stream_s": 6.0, **figures}))


if __name__ == "__main__":
    main()
