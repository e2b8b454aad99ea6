"""How many MongoDB commands this process sends, by command name (PyMongo command monitoring).

One listener per process, passed to the MongoDB client where it is made (bot/stores.py); the
counts are shown on /metrics as `mnemo_mongodb_commands{command=...}` (bench/load.py divides
them by the messages answered)."""

from __future__ import annotations

import threading
from collections import Counter

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self._counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


COMMANDS = CommandCounter()
