"""Logging to stderr (stdout is for replies on the console), text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", log_file: Path | None = None) -> Path | None:
    """Log records to stderr; with `log_file` (the console in a terminal) they go to that file
    and stderr shows warnings and errors only, so the chat stays readable. Library warnings
    (`warnings.warn`) become log records instead of lines on the terminal. Returns the file
    actually used (None when it could not be opened: then everything goes to stderr)."""
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError:
            log_file = None
        else:
            to_file.setFormatter(formatter)
            stderr.setLevel(logging.WARNING)
            handlers.append(to_file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(True)
    # Third-party libraries log request bodies/URLs at INFO/DEBUG; keep them quiet.
    for noisy in ("LiteLLM", "litellm", "httpx", "chromadb", "aiogram.event", "discord", "slack_bolt",
                  "faster_whisper", "secantus", "pymongo", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    return log_file
