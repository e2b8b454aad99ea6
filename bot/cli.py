"""`mnemo run` and `mnemo chat` (DESIGN.md's CLI contract)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bot.config import ConfigError, Settings, load_settings
from bot.logs import setup_logging

NO_PLATFORM = (
    "mnemo: no platform is configured. Set TELEGRAM_BOT_TOKEN, DISCORD_BOT_TOKEN, or SLACK_BOT_TOKEN "
    "(with SLACK_APP_TOKEN or SLACK_SIGNING_SECRET), or try the console: mnemo chat"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnemo", description="Mnemo: a chat assistant with cited long-term memory")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve every platform whose credentials are set")
    chat = sub.add_parser("chat", help="talk to Mnemo on the console (stdin lines, replies on stdout)")
    chat.add_argument("--user", default=None, help="who is talking (default: the OS user)")
    chat.add_argument("--channel", default=None, help="a group channel name (default: a DM with the bot)")
    chat.add_argument("--admin", action="store_true", help="be an admin of --channel (may change settings)")
    web = sub.add_parser(
        "web", help="chat and dashboard in a browser on http://127.0.0.1:PORT/ (prints a one-time login link)",
        description="Reads MNEMO_DATA_DIR, MONGODB_URI, CHROMA_URL, MNEMO_MODEL, MNEMO_LLM_API_BASE, "
        "MNEMO_LLM_API_KEY, MNEMO_EMBEDDING_MODEL, MNEMO_PUBLIC_URL.",
    )
    web.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    return parser


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "user"


async def _chat(settings: Settings, user: str, channel: str | None, admin: bool) -> int:
    from adapters.console import ConsoleAdapter
    from bot.app import open_core

    async with open_core(settings, background=False) as core:
        console = ConsoleAdapter(core, user=user, channel=channel, admin=admin)
        core.register(console)
        await console.run()
    return 0


async def _web(settings: Settings, port: int) -> int:
    from bot.web import run_web

    return await run_web(settings, port)


async def _run(settings: Settings) -> int:
    from bot.app import run_platforms

    return await run_platforms(settings)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"mnemo: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "run" and not settings.platforms:
        print(NO_PLATFORM, file=sys.stderr)
        return 2
    try:
        if args.command == "chat":
            user = (args.user or _os_user()).strip() or "user"
            return asyncio.run(_chat(settings, user, args.channel, args.admin))
        if args.command == "web":
            return asyncio.run(_web(settings, args.port))
        return asyncio.run(_run(settings))
    except ConfigError as exc:
        print(f"mnemo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
