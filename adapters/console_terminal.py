"""`mnemo chat` in a terminal: a prompt with line editing and history, Ctrl-C / Ctrl-D to leave.

Why a thread: the prompt has to run in the main thread. That is where Python's readline
edits the line, restores the terminal, and turns Ctrl-C into KeyboardInterrupt at once
(a read in a worker thread would wait for Enter before the session could end). So the main
thread reads lines and the core runs its event loop in a second thread; each line is
handed over and its reply printed before the next prompt.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from adapters.console import ConsoleAdapter

OpenConsole = Callable[[], AbstractAsyncContextManager[ConsoleAdapter]]
_POLL_S = 0.1  # how often the prompt thread checks for Ctrl-C while a reply is being made


class _CoreThread(threading.Thread):
    """Runs the console session's event loop; lines arrive through `submit`."""

    def __init__(self, open_console: OpenConsole) -> None:
        super().__init__(name="mnemo-core", daemon=True)
        self.open_console = open_console
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lines: asyncio.Queue[tuple[str, threading.Event] | None] | None = None
        self._current: asyncio.Task[None] | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._session())
        except BaseException as exc:  # noqa: BLE001 - reported by the prompt thread
            self.error = exc
        finally:
            self.ready.set()

    async def _session(self) -> None:
        async with self.open_console() as console:
            self.loop = asyncio.get_running_loop()
            self._lines = asyncio.Queue()
            self.ready.set()
            while (item := await self._lines.get()) is not None:
                line, done = item
                self._current = asyncio.create_task(console.handle_line(line))
                try:
                    await self._current
                except asyncio.CancelledError:
                    pass  # Ctrl-C while answering: the message is stored; the session ends
                finally:
                    done.set()

    def submit(self, line: str | None) -> threading.Event:
        done = threading.Event()
        assert self.loop is not None and self._lines is not None
        item = None if line is None else (line, done)
        self.loop.call_soon_threadsafe(self._lines.put_nowait, item)
        return done

    def interrupt(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: self._current.cancel() if self._current else None)


def _enable_line_editing(history: Path) -> Any:
    try:
        import readline
    except ImportError:  # no GNU readline / libedit on this Python: plain input
        return None
    readline.set_history_length(1000)
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    return readline


def _save_history(readline: Any, history: Path) -> None:
    if readline is None:
        return
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.touch(mode=0o600)
        readline.write_history_file(history)
    except OSError:
        pass


def run_in_terminal(open_console: OpenConsole, banner: str, prompt: str, history: Path) -> int:
    """The interactive session; returns the exit code (0 when the person ends it)."""
    err = sys.stderr
    err.write("starting…")
    err.flush()
    core = _CoreThread(open_console)
    core.start()
    try:
        while not core.ready.wait(_POLL_S):
            pass
    except KeyboardInterrupt:
        err.write("\r\033[K")
        return 130  # the daemon thread dies with the process; nothing was typed yet
    err.write("\r\033[K")
    if core.error is not None:
        raise core.error
    err.write(banner + "\n")
    err.flush()
    readline = _enable_line_editing(history)
    try:
        while True:
            try:
                line = input(prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: leave without a traceback
                sys.stdout.write("\n")
                break
            if not line.strip():
                continue
            done = core.submit(line)
            try:
                while not done.wait(_POLL_S):
                    pass
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                core.interrupt()
                break
    finally:
        _save_history(readline, history)
        sys.stdout.flush()
        if core.loop is not None and core.is_alive():
            core.submit(None)
        try:
            core.join()
        except KeyboardInterrupt:  # a second Ctrl-C while the stores close: leave now
            return 130
    if core.error is not None:
        raise core.error
    return 0
