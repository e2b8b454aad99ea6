"""A progress bar on stderr for long operations: count, rate, time left.

On a terminal it redraws one line in place; otherwise (a log file, CI) it prints a plain line
every few seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressBar:
    def __init__(self, total: int, label: str = "messages", stream: TextIO | None = None,
                 plain_every_s: float = 5.0, prefix: str = "import") -> None:
        self.total = max(0, total)
        self.label = label
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._every = 0.2 if self.tty else plain_every_s
        self._last = 0.0
        self._drawn = -1  # `done` when last drawn

    def advance(self, count: int) -> None:
        if count <= 0:
            return
        self.done = min(self.total, self.done + count)
        now = time.monotonic()
        if now - self._last >= self._every or self.done == self.total:
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-6, (now or time.monotonic()) - self.started)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        share = self.done / self.total if self.total else 1.0
        text = f"{self.done:,}/{self.total:,} {self.label} ({share:.0%}), {rate:,.0f}/s"
        if self.done < self.total:
            text += f", {_duration(left)} left" if rate > 0 else ", estimating time left"
        else:
            text += f", took {_duration(elapsed)}"
        return text

    def _draw(self, now: float) -> None:
        self._drawn = self.done
        if self.tty:
            width = 24
            filled = int(width * (self.done / self.total if self.total else 1.0))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line(now)}\x1b[K")
        else:
            self.stream.write(f"{self.prefix}: {self.line(now)}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn != self.done:
            self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
