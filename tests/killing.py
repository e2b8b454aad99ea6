"""Drive a real `mnemo chat` process and SIGKILL it at random points (shared by the crash
tests and `bench/crash.py`). A line counts as acknowledged once its reply is on stdout: the
message was stored before that reply was written, so it must survive the kill."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The first line of the answer to a line told in a DM without a model (an acknowledgement): one per line.
ANSWER = ("Got it", "Noted", "Retrieval-only mode")
INFLIGHT = "/optin"  # a command whose reply is its own ("I'll remember..."), sent just before a kill


@dataclass
class ChatProcess:
    """`mnemo chat` with stdin/stdout pipes; replies read line by line on a thread."""

    env: dict[str, str]
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[str] = field(init=False)
    lines: queue.Queue[str | None] = field(init=False, default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "chat", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            text=True, env=self.env, cwd=str(REPO), bufsize=1,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, matches: Any, timeout: float) -> bool:
        """Read stdout until a line for which `matches(line)` is true."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            if matches(line):
                return True

    def read_until(self, prefix: str | tuple[str, ...], timeout: float) -> str:
        """stdout up to and including the first line starting with `prefix`."""
        seen: list[str] = []
        self.wait_for(lambda line: bool(seen.append(line)) or line.startswith(prefix), timeout)
        return "\n".join(seen)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def finish(self, timeout: float = 120) -> str:
        """Close stdin, wait for a clean exit; returns the stdout not read yet."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(line)
        return "\n".join(rest)


@dataclass
class KillFigures:
    kills: int = 0
    acknowledged: list[str] = field(default_factory=list)  # lines whose answer reached stdout


def run_kill_rounds(env: dict[str, str], rounds: int, seed: int, max_lines: int = 3) -> KillFigures:
    """Each round: start `mnemo chat`, tell it a few DM lines, wait for each answer, SIGKILL
    at a random point (right after an answer, or while a command is being stored/answered).
    The caller checks the acknowledged lines against the store after a clean restart."""
    rng = random.Random(seed)
    figures = KillFigures()
    for round_no in range(rounds):
        chat = ChatProcess(env, ("--user", "kim"))
        try:
            for line_no in range(rng.randint(1, max_lines)):
                text = f"note r{round_no} l{line_no} token{rng.randrange(10**9)}"
                chat.send(text)
                # Answers come in order (a line recovered from the last process first, but
                # those are commands or "interrupted" notices, never an ANSWER).
                if not chat.wait_for(lambda line: line.startswith(ANSWER), timeout=120):
                    break
                figures.acknowledged.append(text)
            if rng.random() < 0.6:
                chat.send(INFLIGHT)
                time.sleep(rng.uniform(0, 0.5))
        finally:
            chat.kill()
            figures.kills += 1
        print(f"kill {figures.kills}/{rounds}: {len(figures.acknowledged)} acknowledged so far", file=sys.stderr)
    return figures


def exported(env: dict[str, str], user: str, data_dir: Path) -> list[dict[str, Any]]:
    """The messages `/export` returns for `user`, from a clean run of `mnemo chat` (which
    first answers what the last killed process left unfinished)."""
    chat = ChatProcess(env, ("--user", user))
    chat.send("/export")
    chat.finish()
    return list(json.loads(newest_export(data_dir, user).read_text())["messages"])


def newest_export(data_dir: Path, user: str) -> Path:
    """The last `/export` file of `user` (names carry their time)."""
    return max((data_dir / "exports").glob(f"mnemo-export-console-{user}-*.json"))


def seed_from_env() -> int:
    return int(os.environ.get("MNEMO_KILL_SEED") or random.randrange(10**6))


@dataclass
class ForgetFigures:
    rounds: int = 0
    forgotten: set[str] = field(default_factory=set)  # lines whose /forget was acknowledged
    back: set[str] = field(default_factory=set)  # forgotten lines found again afterwards


def run_forget_rounds(env: dict[str, str], data_dir: Path, rounds: int, seed: int) -> ForgetFigures:
    """Each round: a fresh `mnemo chat` first exports (nothing forgotten may be back), then is
    told a few lines, forgets them (`/forget all`, or `/forget ID` of one), and is SIGKILLed
    right after the acknowledgement or a moment later."""
    rng = random.Random(seed)
    figures = ForgetFigures()
    for round_no in range(rounds + 1):
        chat = ChatProcess(env, ("--user", "fay"))
        try:
            for earlier in (data_dir / "exports").glob("*.json"):
                earlier.unlink()
            chat.send("/export")
            if not chat.wait_for(lambda line: line.startswith("Written to"), timeout=180):
                raise AssertionError("no /export reply")
            exported_now = json.loads(newest_export(data_dir, "fay").read_text())["messages"]
            texts = {doc["text"] for doc in exported_now if doc["text"].startswith("note")}
            figures.back |= texts & figures.forgotten
            if round_no == rounds:
                break
            told = [f"note r{round_no} l{n} token{rng.randrange(10**9)}" for n in range(rng.randint(1, 3))]
            for text in told:
                chat.send(text)
                assert chat.wait_for(lambda line: line.startswith(ANSWER), timeout=120), text
            if rng.random() < 0.5:
                chat.send("/forget all")
                if chat.wait_for(lambda line: line.startswith("Done: I forgot everything"), timeout=120):
                    figures.forgotten |= texts | set(told)
            else:
                chat.send("/memory")
                listing = chat.read_until("Delete one with", timeout=120)
                target = re.findall(r"^• (m\w{9}) · ", listing, re.MULTILINE)[0]  # newest: the last line told
                chat.send(f"/forget {target}")
                done = f"Done: I forgot {target}."
                if chat.wait_for(done.__eq__, timeout=120):
                    figures.forgotten.add(told[-1])
            time.sleep(rng.uniform(0, 0.3))
        finally:
            chat.kill()
        figures.rounds += 1
        print(f"forget round {figures.rounds}/{rounds}: {len(figures.back)} forgotten lines back",
              file=sys.stderr)
    return figures
