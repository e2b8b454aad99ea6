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
    sub.add_parser(
        "reindex", help="rebuild the memory index (Chroma) from MongoDB, e.g. after its directory was lost",
        description="Rebuild the memory index from MongoDB. Reads MNEMO_DATA_DIR, MONGODB_URI, CHROMA_URL, "
        "MNEMO_EMBEDDING_MODEL.",
    )
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


async def _reindex(settings: Settings) -> int:
    from bot.app import open_core

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        print(f"\rreindex [{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages", end="",
              file=sys.stderr, flush=True)

    async with open_core(settings, background=False) as core:
        count = await core.reindex(progress=progress)
    print(f"\nreindexed {count} messages", file=sys.stderr)
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
        if args.command == "reindex":
            return asyncio.run(_reindex(settings))
        if args.command == "chat":
            user = (args.user or _os_user()).strip() or "user"
            return asyncio.run(_chat(settings, user, args.channel, args.admin))
        return asyncio.run(_run(settings))
    except ConfigError as exc:
        print(f"mnemo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
