"""`mnemo chat` in a real terminal (tmux): banner, prompt, line editing and history, replies
set off from what you type, logs kept off the screen, Ctrl-C and Ctrl-D ending it at once.
Keys are sent and the screen is read the way a person would use it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (bash deploy/install.sh --dev installs it)")


class Terminal:
    """One tmux session running `mnemo chat ARGS` with `env`; the pane is the screen."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mnemo-tty-"))  # short: tmux socket paths are limited
        script = self.folder / "session.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        command = shlex.join([sys.executable, "-m", "bot.cli", "chat", *args])
        # bash, not sh: bash goes on after a child that handled Ctrl-C itself (exited, not killed)
        script.write_text(f"{exports}cd {shlex.quote(str(REPO))}\n{command}\necho EXIT=$?\nsleep 600\n")
        self.tmux = [str(TMUX), "-S", str(self.folder / "tmux.sock")]
        subprocess.run([*self.tmux, "-f", "/dev/null", "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50",
                        "bash", str(script)], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-J", "-t", "chat", "-S", "-200"],
                              capture_output=True, text=True, check=True).stdout

    def exit_code(self, timeout: float = 60) -> int:
        """The chat process's exit status once it has ended (the script prints it)."""
        screen = self.wait_for("EXIT=", timeout=timeout)
        return int(screen[screen.rindex("EXIT=") + 5:].split()[0])

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "chat", *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "chat", "-l", text], check=True)

    def wait_for(self, needle: str, timeout: float = 120, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(needle) >= count:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} x{count} never appeared on the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def terminal_env(base_env: dict[str, str]) -> dict[str, str]:
    return {**base_env, "TERM": "xterm-256color", "MNEMO_LOG_LEVEL": "INFO"}


@pytest.fixture
def open_terminal(terminal_env: dict[str, str]) -> Iterator[type[Terminal]]:
    opened: list[Terminal] = []

    def factory(*args: str) -> Terminal:
        terminal = Terminal(terminal_env, *args)
        opened.append(terminal)
        return terminal

    yield factory  # type: ignore[misc]
    for terminal in opened:
        terminal.close()


def test_a_chat_in_a_terminal_edits_lines_keeps_history_and_ends_with_ctrl_d(
    open_terminal: type[Terminal], data_dir: Path
) -> None:
    term = open_terminal("--user", "alice")
    screen = term.wait_for("alice> ")
    banner = screen.strip().splitlines()[0]
    assert "you are alice, in a DM with Mnemo" in banner and f"data: {data_dir}" in banner and "/help" in banner

    term.type("My sister Ana was born on March 3rd")
    term.keys("Enter")
    term.wait_for("mnemo> ")
    # line editing: type with a missing apostrophe, move left, insert it
    term.type("When is Anas birthday?")
    term.keys(*["Left"] * 11)
    term.type("'")
    term.keys("Enter")
    screen = term.wait_for("mnemo> ", count=2)
    assert "alice> When is Ana's birthday?" in screen
    answer = screen[screen.rindex("mnemo> "):]
    assert "March 3rd" in answer, screen
    # history: Up brings the last line back
    term.keys("Up")
    term.wait_for("alice> When is Ana's birthday?", count=2)
    term.keys("C-u")  # clear the recalled line
    term.keys("C-d")
    assert term.exit_code() == 0
    screen = term.screen()
    assert "Traceback" not in screen
    assert " INFO " not in screen  # log records go to the data dir's log file, not the chat
    assert (data_dir / "logs" / "mnemo.log").is_file()
    assert "When is Ana's birthday?" in (data_dir / "chat_history").read_text()


def test_ctrl_c_at_the_prompt_ends_the_chat_without_enter_or_traceback(open_terminal: type[Terminal]) -> None:
    term = open_terminal("--user", "bob", "--channel", "general")
    screen = term.wait_for("bob> ")
    assert "in #general" in screen and "@mnemo" in screen
    term.type("half a line")
    term.keys("C-c")
    assert term.exit_code(timeout=30) == 0
    screen = term.screen()
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
