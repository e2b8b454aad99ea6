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
    _add_import(sub)
    return parser


def _add_import(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import", help="import a chat-history export into memory (safe to run twice)",
        description="Import a platform's chat-history export: Telegram Desktop's JSON (result.json, or its "
        "folder), Slack's workspace export (the zip or its folder), DiscordChatExporter JSON (a file or a folder). "
        "Reads MNEMO_DATA_DIR, MONGODB_URI, MNEMO_MONGODB_DB, CHROMA_URL, MNEMO_EMBEDDING_MODEL, MNEMO_STT_MODEL, "
        "MNEMO_VISION_MODEL, MNEMO_LLM_API_BASE, MNEMO_LLM_API_KEY, and SLACK_BOT_TOKEN/SLACK_API_BASE (Slack "
        "permalinks via chat.getPermalink when no workspace URL is known).",
    )
    imp.add_argument("platform", choices=["telegram", "slack", "discord"])
    imp.add_argument("path", help="the export: a file, a folder, or (Slack) the zip")
    imp.add_argument("--workspace-url", default=None,
                     help="Slack: https://<team>.slack.com, for the permalinks (exports carry no domain)")


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot.importer import run_import

    return await run_import(settings, args.platform, Path(args.path), args.workspace_url)


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
        if args.command == "import":
            return asyncio.run(_import(settings, args))
        if args.command == "chat":
            user = (args.user or _os_user()).strip() or "user"
            return asyncio.run(_chat(settings, user, args.channel, args.admin))
        return asyncio.run(_run(settings))
    except ConfigError as exc:
        print(f"mnemo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "import":
            print("mnemo import: interrupted; run the same command again to finish (nothing is imported twice)",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
