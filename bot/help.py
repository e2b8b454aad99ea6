"""What `mnemo --help` and each subcommand's `--help` say about configuration: the environment
variables the command reads (DESIGN.md's table), the `.env` file, and the data dir."""

from __future__ import annotations

import os
from pathlib import Path

VARIABLES: dict[str, str] = {
    "MNEMO_DATA_DIR": "where the embedded stores, logs and exports live",
    "MONGODB_URI": "MongoDB to use (unset: an embedded server in the data dir)",
    "MNEMO_MONGODB_DB": "MongoDB database name (mnemo)",
    "CHROMA_URL": "Chroma server, e.g. http://chroma:8000 (unset: embedded in the data dir)",
    "MNEMO_MODEL": "litellm model for answers (unset: retrieval-only answers)",
    "MNEMO_REASONING_MODEL": "litellm model for /deep and mode=reasoning (MNEMO_MODEL)",
    "MNEMO_LEARNING_MODEL": "litellm model that learns facts (MNEMO_MODEL)",
    "MNEMO_LLM_API_BASE": "api_base passed to litellm",
    "MNEMO_LLM_API_KEY": "api_key passed to litellm",
    "MNEMO_LLM_TIMEOUT": "seconds per model answer (60)",
    "MNEMO_EMBEDDING_MODEL": "local, or a litellm embedding model (local)",
    "MNEMO_STT_MODEL": "local, or a litellm transcription model (local)",
    "MNEMO_VISION_MODEL": "litellm vision model for images (unset: OCR)",
    "MNEMO_MAX_FILE_MB": "largest attachment read (20)",
    "MNEMO_MAX_AUDIO_MINUTES": "longest voice note transcribed (10)",
    "MNEMO_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (INFO)",
    "MNEMO_LOG_FORMAT": "text or json (text)",
    "MNEMO_HTTP_HOST": "HTTP server address: webhooks, /healthz, /metrics (0.0.0.0)",
    "MNEMO_HTTP_PORT": "HTTP server port (8080)",
    "MNEMO_PUBLIC_URL": "public base URL: enables /dashboard links",
    "MNEMO_LEASE_SECONDS": "how long a worker holds a message (120)",
    "MNEMO_DRAIN_SECONDS": "time given to in-flight work on SIGTERM (20)",
    "TELEGRAM_BOT_TOKEN": "enables Telegram",
    "TELEGRAM_API_BASE": "Bot API server (official)",
    "TELEGRAM_WEBHOOK_URL": "webhook mode at POST /telegram/webhook (unset: long polling)",
    "TELEGRAM_WEBHOOK_SECRET": "secret Telegram sends with each webhook call",
    "DISCORD_BOT_TOKEN": "enables Discord",
    "DISCORD_API_BASE": "Discord REST base (https://discord.com/api/v10)",
    "SLACK_BOT_TOKEN": "enables Slack",
    "SLACK_APP_TOKEN": "Slack Socket Mode",
    "SLACK_SIGNING_SECRET": "Slack HTTP mode at POST /slack/events",
    "SLACK_API_BASE": "Slack Web API base (https://slack.com/api/)",
}

_CORE = [
    "MNEMO_DATA_DIR", "MONGODB_URI", "MNEMO_MONGODB_DB", "CHROMA_URL", "MNEMO_MODEL", "MNEMO_REASONING_MODEL",
    "MNEMO_LEARNING_MODEL", "MNEMO_LLM_API_BASE", "MNEMO_LLM_API_KEY", "MNEMO_LLM_TIMEOUT",
    "MNEMO_EMBEDDING_MODEL", "MNEMO_STT_MODEL", "MNEMO_VISION_MODEL", "MNEMO_MAX_FILE_MB",
    "MNEMO_MAX_AUDIO_MINUTES", "MNEMO_LOG_LEVEL", "MNEMO_LOG_FORMAT",
]
_PLATFORMS = [name for name in VARIABLES if name.startswith(("TELEGRAM_", "DISCORD_", "SLACK_"))]
_SERVER = ["MNEMO_HTTP_HOST", "MNEMO_HTTP_PORT", "MNEMO_PUBLIC_URL", "MNEMO_LEASE_SECONDS", "MNEMO_DRAIN_SECONDS"]

READS: dict[str, list[str]] = {
    "mnemo": list(VARIABLES),
    "run": _CORE + _SERVER + _PLATFORMS,
    "chat": _CORE,
    "doctor": _CORE + _PLATFORMS,
    "web": _CORE + ["MNEMO_PUBLIC_URL"],
    "import": _CORE + ["SLACK_BOT_TOKEN", "SLACK_API_BASE"],  # chat.getPermalink for Slack exports
}


def epilog(command: str, data_dir: Path | None) -> str:
    """The configuration section of a command's help (commands not listed read the core's)."""
    names = READS.get(command, _CORE + ["MNEMO_HTTP_HOST", "MNEMO_HTTP_PORT", "MNEMO_PUBLIC_URL"])
    width = max(len(name) for name in names)
    lines = ["environment variables read (a .env file in the current directory is read too):"]
    for name in names:
        mark = " (set)" if os.environ.get(name) else ""
        lines.append(f"  {name:<{width}}  {VARIABLES.get(name, '')}{mark}")
    where = str(data_dir) if data_dir is not None else "$XDG_DATA_HOME/mnemo (~/.local/share/mnemo)"
    lines.append("")
    lines.append(f"data dir: {where}  (MNEMO_DATA_DIR overrides it)")
    return "\n".join(lines)
