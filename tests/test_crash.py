"""Crashes of the real product on its embedded stores: `mnemo chat` SIGKILLed at random
points. What was acknowledged stays; what was left unfinished is answered by the next start;
what was forgotten stays forgotten. (`MNEMO_KILL_SEED=N` replays a run; `bench/crash.py` runs
the long version.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.fakes.llm import FakeLLM, learning_request
from tests.killing import ANSWER, ChatProcess, exported, run_forget_rounds, run_kill_rounds, seed_from_env


def _embedded(base_env: dict[str, str]) -> dict[str, str]:
    env = dict(base_env)
    env.pop("MONGODB_URI")  # the default: SecantusDB inside the killed process
    return env


def test_sigkill_loses_no_acknowledged_message_and_the_next_start_answers_the_rest(
    base_env: dict[str, str], data_dir: Path
) -> None:
    env = _embedded(base_env)
    seed = seed_from_env()
    figures = run_kill_rounds(env, rounds=10, seed=seed)
    assert figures.kills >= 10 and len(figures.acknowledged) >= 10
    messages = exported(env, "kim", data_dir)
    stored = {doc["text"] for doc in messages}
    lost = [text for text in figures.acknowledged if text not in stored]
    assert lost == [], f"seed {seed}: {len(lost)} of {len(figures.acknowledged)} acknowledged lines lost: {lost}"
    # Whatever a killed process stored but had not finished was answered by a later start
    # (its own predecessor's work: nobody else would), and nothing is left pending.
    unanswered = [(doc["text"], doc.get("answered")) for doc in messages
                  if doc["text"] != "/export" and not doc.get("answered")]
    assert unanswered == [], f"seed {seed}: stored but never answered: {unanswered}"


def test_forgotten_messages_never_come_back_after_a_sigkill(base_env: dict[str, str], data_dir: Path) -> None:
    env = _embedded(base_env)
    seed = seed_from_env()
    figures = run_forget_rounds(env, data_dir, rounds=10, seed=seed)
    assert figures.rounds >= 10 and figures.forgotten
    assert figures.back == set(), f"seed {seed}: forgotten lines came back: {sorted(figures.back)}"


def test_forget_during_a_chroma_failure_is_an_error_then_finished_at_start_up(
    base_env: dict[str, str], data_dir: Path
) -> None:
    env = _embedded(base_env)
    chat = ChatProcess(env, ("--user", "gus"))
    try:
        chat.send("my passport number is X1234567")
        assert chat.wait_for(lambda line: line.startswith(ANSWER), timeout=120)
        shutil.rmtree(data_dir / "chroma")  # the index can no longer be written
        chat.send("/forget all")
        reply = chat.read_until("", timeout=120)
        assert "Done" not in reply and "couldn't finish forgetting" in reply, reply
    finally:
        chat.finish()
    # The deletion was recorded before anything else: the next start finishes it.
    after = ChatProcess(env, ("--user", "gus"))
    after.send("/memory")
    listing = after.read_until(("I don't remember", "What I remember"), timeout=120)
    after.finish()
    assert "X1234567" not in listing and "I don't remember anything from you." in listing, listing


def test_a_voice_note_adopted_after_a_crash_is_answered_from_its_transcript(
    base_env: dict[str, str], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    from pymongo import MongoClient

    voice = tmp_path / "note.ogg"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "libopus",
                    str(voice)], check=True)
    # A question: answered by the model (a statement would be acknowledged without one).
    fake_llm.transcript = "when is the boiler service booked?"
    env = {**base_env, **fake_llm.env(), "MNEMO_STT_MODEL": "whisper-1",
           "MNEMO_EMBEDDING_MODEL": "openai/fake-embedding"}
    fake_llm.delay_s = 60  # the answer hangs: the process is killed after the transcript is stored
    chat = ChatProcess(env, ("--user", "lea"))
    with MongoClient(env["MONGODB_URI"]) as client:
        messages = client[env["MNEMO_MONGODB_DB"]].messages
        try:
            chat.send(f"/attach {voice}")
            deadline = time.monotonic() + 120
            while messages.find_one({"media_text": {"$ne": None}}) is None:
                assert time.monotonic() < deadline, "the transcript was never stored"
                time.sleep(0.2)
        finally:
            chat.kill()
        fake_llm.delay_s = 0
        fake_llm.script = ["Noted: the boiler service is on the ninth."]
        reply = ChatProcess(env, ("--user", "lea")).finish()
        assert "empty" not in reply.lower() and "boiler" in reply, reply
        # The answer was asked from the stored transcript (the file was not read again).
        assert any("when is the boiler service booked?" in str(request["messages"])
                   for request in fake_llm.chat_requests() if not learning_request(request))
        assert messages.find_one({})["answered"] is True


def test_a_lost_chroma_directory_is_rebuilt_by_reindex_with_what_was_said_meanwhile(
    base_env: dict[str, str], data_dir: Path
) -> None:
    env = _embedded(base_env)
    chat = ChatProcess(env, ("--user", "max"))
    chat.send("my locker number is 4817")
    assert chat.wait_for(lambda line: line.startswith(ANSWER), timeout=120)
    shutil.rmtree(data_dir / "chroma")  # lost while running: this line cannot be indexed
    chat.send("the bike lock code is 1357")
    reply = chat.read_until("", timeout=120)
    assert "went wrong" not in reply, reply
    chat.finish()
    shutil.rmtree(data_dir / "chroma", ignore_errors=True)
    rebuilt = subprocess.run([sys.executable, "-m", "bot.cli", "reindex"], env=env, cwd=str(REPO),
                             capture_output=True, text=True, timeout=240, check=False)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "reindex [" in rebuilt.stderr and "2/2 messages" in rebuilt.stderr
    asked = ChatProcess(env, ("--user", "max"))
    asked.send("what is my bike lock code and my locker number?")
    answer = asked.finish()
    assert "1357" in answer and "4817" in answer, answer


async def test_healthz_reports_an_unwritable_chroma(make_core: Any, data_dir: Path) -> None:
    import aiohttp

    from bot.http import HttpServer, build_http_app
    from tests.fakes.cluster import free_port

    core = await make_core()
    http = HttpServer(build_http_app(core), "127.0.0.1", free_port())
    await http.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{http.port}/healthz") as ok:
                assert ok.status == 200 and (await ok.json())["chroma"] == "ok"
            shutil.rmtree(data_dir / "chroma0")  # make_core's first Chroma directory
            async with session.get(f"http://127.0.0.1:{http.port}/healthz") as broken:
                body = await broken.json()
                assert broken.status == 503 and body["chroma"].startswith("error") and body["mongodb"] == "ok"
    finally:
        await http.stop()
