"""The `mnemo` command: run, chat, import, web, reindex, doctor (DESIGN.md's CLI contract)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # the environment above is set before any library import
from typing import TextIO

from bot import help as cli_help
from bot.config import ConfigError, Settings, default_data_dir, load_settings
from bot.logs import setup_logging

NO_PLATFORM = (
    "mnemo: no platform is configured. Set TELEGRAM_BOT_TOKEN, DISCORD_BOT_TOKEN, or SLACK_BOT_TOKEN "
    "(with SLACK_APP_TOKEN or SLACK_SIGNING_SECRET), or try the console: mnemo chat"
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("mnemo-bot")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _data_dir_for_help() -> Path | None:
    value = os.environ.get("MNEMO_DATA_DIR", "").strip()
    return Path(value).expanduser() if value else default_data_dir()


def _parser() -> argparse.ArgumentParser:
    data_dir = _data_dir_for_help()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mnemo",
        description="Mnemo: a chat assistant with cited long-term memory. Start with: mnemo chat",
        epilog=cli_help.epilog("mnemo", data_dir),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"mnemo {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    _add_import(sub)
    web = sub.add_parser(
        "web", help="chat and dashboard in a browser on http://127.0.0.1:PORT/ (prints a one-time login link)",
    )
    web.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    sub.add_parser("doctor", help="check the configuration, stores, model and platform tokens, one line each")
    for name, command in sub.choices.items():  # every subcommand's --help names what it reads
        command.formatter_class = formatter
        command.epilog = command.epilog or cli_help.epilog(name, data_dir)
    return parser


def _add_import(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import", help="import a chat-history export into memory (safe to run twice)",
        description="Import a platform's chat-history export: Telegram Desktop's JSON (result.json, or its "
        "folder), Slack's workspace export (the zip or its folder), DiscordChatExporter JSON (a file or a folder). "
        "With SLACK_BOT_TOKEN set and no workspace URL known, Slack permalinks come from chat.getPermalink.",
    )
    imp.add_argument("platform", choices=["telegram", "slack", "discord"])
    imp.add_argument("path", help="the export: a file, a folder, or (Slack) the zip")
    imp.add_argument("--workspace-url", default=None,
                     help="Slack: https://<team>.slack.com, for the permalinks (exports carry no domain)")


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    from bot.importer import run_import

    return await run_import(settings, args.platform, Path(args.path), args.workspace_url)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "user"


def _banner(settings: Settings, user: str, channel: str | None) -> str:
    where = f"in #{channel} (a group: I answer lines that mention @mnemo)" if channel else "in a DM with Mnemo"
    model = settings.model or "no model (retrieval-only)"
    return f"mnemo {version()} · you are {user}, {where} · model: {model} · data: {settings.data_dir} · /help"


def _replies_stream() -> TextIO:
    """stdout for replies only: a private copy of it, with fd 1 pointed at stderr so anything
    else a library prints (to sys.stdout or straight to the file descriptor) lands there."""
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


async def _chat(settings: Settings, user: str, channel: str | None, admin: bool, out: TextIO) -> int:
    from adapters.console import ConsoleAdapter
    from bot.app import open_core

    async with open_core(settings, background=False) as core:
        console = ConsoleAdapter(core, user=user, channel=channel, admin=admin, out=out)
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
def _chat_in_terminal(settings: Settings, user: str, channel: str | None, admin: bool) -> int:
    from contextlib import asynccontextmanager

    from adapters.console import ConsoleAdapter
    from adapters.console_terminal import run_in_terminal
    from bot.app import open_core

    @asynccontextmanager
    async def open_console():  # type: ignore[no-untyped-def]
        async with open_core(settings, background=False) as core:
            console = ConsoleAdapter(core, user=user, channel=channel, admin=admin, reply_prefix="mnemo> ")
            core.register(console)
            yield console

    prompt = f"{user}> "
    return run_in_terminal(open_console, _banner(settings, user, channel), prompt, settings.data_dir / "chat_history")


async def _web(settings: Settings, port: int) -> int:
    from bot.web import run_web

    return await run_web(settings, port)


async def _run(settings: Settings) -> int:
    from bot.app import run_platforms

    return await run_platforms(settings)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # No byte sequence ends a session: an undecodable byte becomes U+FFFD.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"mnemo: {exc}", file=sys.stderr)
        return 2
    interactive = args.command == "chat" and sys.stdin.isatty() and sys.stdout.isatty()
    log_file = settings.data_dir / "logs" / "mnemo.log" if interactive else None
    setup_logging(settings.log_level, settings.log_format, log_file=log_file)
    if args.command == "doctor":
        from bot.doctor import doctor

        return asyncio.run(doctor(settings))
    if args.command == "run" and not settings.platforms:
        print(NO_PLATFORM, file=sys.stderr)
        return 2
    try:
        if args.command == "reindex":
            return asyncio.run(_reindex(settings))
        if args.command == "import":
            return asyncio.run(_import(settings, args))
        if args.command == "chat":
            user = (args.user or _os_user()).strip() or "user"
            if interactive:
                return _chat_in_terminal(settings, user, args.channel, args.admin)
            print(_banner(settings, user, args.channel), file=sys.stderr)
            return asyncio.run(_chat(settings, user, args.channel, args.admin, _replies_stream()))
        # Through logging: with MNEMO_LOG_FORMAT=json every stderr line stays one JSON object.
        logging.getLogger("bot.cli").info("mnemo %s · data: %s", version(), settings.data_dir)
        if args.command == "web":
            return asyncio.run(_web(settings, args.port))
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
