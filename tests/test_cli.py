"""The `mnemo` command as a newcomer meets it: --version, help that names what it reads,
and `mnemo run` / `mnemo chat` when a platform or the data dir is not available."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO, run_chat
from tests.fakes.llm import FakeLLM
from tests.fakes.telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram


def mnemo(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=timeout, check=False)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_version_and_every_help_names_the_variables_the_env_file_and_the_data_dir(tmp_path: Path) -> None:
    version = mnemo("--version")
    assert version.returncode == 0 and re.fullmatch(r"mnemo \d+\.\d+\.\d+\S*\n", version.stdout), version
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNEMO_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    bare = mnemo(env=env)
    assert bare.returncode == 2 and "chat" in bare.stderr and "MNEMO_DATA_DIR" in bare.stderr
    for command, expected in (([], "TELEGRAM_BOT_TOKEN"), (["run"], "SLACK_SIGNING_SECRET"),
                              (["chat"], "MNEMO_MODEL"), (["doctor"], "DISCORD_BOT_TOKEN")):
        shown = mnemo(*command, "--help", env=env)
        assert shown.returncode == 0, shown.stderr
        assert expected in shown.stdout and "MONGODB_URI" in shown.stdout, shown.stdout
        assert ".env" in shown.stdout
        assert f"data dir: {tmp_path / 'xdg' / 'mnemo'}" in shown.stdout, shown.stdout


def test_doctor_says_what_works_and_what_to_do(base_env: dict[str, str], fake_llm: FakeLLM) -> None:
    telegram = FakeTelegram().start()
    try:
        env = {**base_env, **fake_llm.env(), "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
               "TELEGRAM_API_BASE": telegram.api_base,
               "SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_SIGNING_SECRET": "s",
               "SLACK_API_BASE": f"http://127.0.0.1:{closed_port()}/api/"}
        result = mnemo("doctor", env=env)
    finally:
        telegram.stop()
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(re.match(r"ok\s+stores: MongoDB at MONGODB_URI and embedded Chroma answer", x) for x in lines), lines
    assert any(re.match(r"ok\s+model: openai/fake-model answered", x) for x in lines), lines
    assert any(re.match(r"ok\s+telegram: TELEGRAM_BOT_TOKEN is valid: @", x) for x in lines), lines
    assert any(re.match(r"FAIL\s+slack: cannot reach the API .*SLACK_API_BASE", x) for x in lines), lines
    assert lines[-1] == "1 check(s) failed"
    assert len(fake_llm.chat_requests()) == 1  # one tiny request


def test_run_with_platforms_unreachable_retries_each_and_stops_at_once_on_sigterm(base_env: dict[str, str]) -> None:
    """Telegram and Discord both down at start-up: each is retried with backoff, one line per
    attempt, neither stops the other, and SIGTERM ends the process within seconds."""
    port = closed_port()
    env = {**base_env, "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_API_BASE": f"http://127.0.0.1:{port}",
           "DISCORD_BOT_TOKEN": "not.a.token", "DISCORD_API_BASE": f"http://127.0.0.1:{port}/api/v10",
           "MNEMO_HTTP_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def attempts(platform: str) -> int:
        return sum(platform in line and "retrying" in line for line in list(lines))

    try:
        deadline = time.monotonic() + 180
        while (attempts("Telegram: getMe failed") < 3 or attempts("discord: cannot reach") < 3) \
                and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert process.poll() is None, "".join(lines)  # still serving: a platform down stops nothing
        assert attempts("Telegram: getMe failed") >= 3 and attempts("discord: cannot reach") >= 3, "".join(lines)
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code = process.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=5)
    assert code == 0, "".join(lines)
    assert took < 15, f"{took:.1f} s after SIGTERM"
    assert len(lines) < 40, f"{len(lines)} lines: {''.join(lines[-5:])}"
    assert "Session is closed" not in "".join(lines) and "Traceback" not in "".join(lines)
    # each attempt says what is wrong: the server named by TELEGRAM_API_BASE cannot be reached
    assert any(f"Bot API cannot be reached at http://127.0.0.1:{port}" in line for line in lines), lines
    for platform in ("Telegram: getMe failed", "discord: cannot reach"):
        pauses = [float(m) for line in lines if platform in line for m in re.findall(r"retrying in ([\d.]+)s", line)]
        assert pauses[0] <= 1.0 < max(pauses), pauses  # backoff: jittered, growing from 1 s


def test_sigterm_with_one_platform_down_and_an_answer_stuck_exits_within_25s(
    base_env: dict[str, str], fake_llm: FakeLLM
) -> None:
    """Telegram unreachable (still retrying its first connection) and Discord up with a question
    at a model that never answers: SIGTERM stops intake on both at once, drains the core (the
    stuck message is handed back for another worker), closes both, and the process exits
    within 25 s with a clean log."""
    from tests.fakes.discord import FakeDiscord

    discord = FakeDiscord().start()
    env = {**base_env, **fake_llm.env(), **discord.env(), "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
           "TELEGRAM_API_BASE": f"http://127.0.0.1:{closed_port()}", "MNEMO_HTTP_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        discord.wait(lambda: discord.ready or process.poll() is not None, timeout=180, what="mnemo run to connect")
        assert process.poll() is None, "".join(lines)
        fake_llm.hang = True
        question = discord.message("what should I bring to the offsite?", dm=True)
        discord.dispatch("MESSAGE_CREATE", question)
        discord.wait(lambda: bool(fake_llm.chat_requests()), timeout=60, what="the question at the model")
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code = process.wait(timeout=90)
        took = time.monotonic() - stopped_at
    finally:
        fake_llm.hang = False
        if process.poll() is None:
            process.kill()
            process.wait()
        discord.stop()
    reader.join(timeout=5)
    log = "".join(lines)
    assert code == 0, log
    assert took < 25, f"{took:.1f} s after SIGTERM"
    assert "handed back 1 unfinished messages" in log, log  # another worker answers it
    assert "Telegram: getMe failed" in log  # it really was down the whole time
    assert "Traceback" not in log and " ERROR " not in log and "Session is closed" not in log, log
    assert "INFO bot.app: stopped" in log, log[-500:]


def test_a_second_chat_on_a_data_dir_in_use_says_who_holds_it(base_env: dict[str, str], data_dir: Path) -> None:
    env = dict(base_env)
    env.pop("MONGODB_URI")  # the embedded stores, which one process at a time may open
    first = subprocess.Popen([sys.executable, "-m", "bot.cli", "chat", "--user", "alice"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(REPO))
    try:
        assert first.stdin is not None and first.stdout is not None
        first.stdin.write("hello\n")
        first.stdin.flush()
        assert first.stdout.readline()  # a reply: the first session has its stores open
        second = run_chat(["hello again"], env, "--user", "bob")
        assert second.returncode == 2, second.stderr
        assert second.stdout == ""
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith(f"mnemo: MNEMO_DATA_DIR: {data_dir} is in use by process {first.pid} ("), message
        assert "Traceback" not in second.stderr
        first.stdin.close()
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_tokens_and_keys_never_show_in_the_settings_repr_or_a_config_error() -> None:
    # Issue 14: secrets as SecretStr. A settings object in a log line or a traceback's locals
    # must not carry a token; a bad secret is named, never echoed.
    from bot.config import ConfigError, load_settings, reveal

    settings = load_settings(telegram_bot_token="123:tg-secret", llm_api_key="sk-live-secret",
                             slack_bot_token="xoxb-secret", slack_signing_secret="signing-secret",
                             discord_bot_token="discord-secret")
    shown = repr(settings) + str(settings) + repr(settings.model_dump())
    for secret in ("tg-secret", "sk-live-secret", "xoxb-secret", "signing-secret", "discord-secret"):
        assert secret not in shown
    assert settings.platforms == ["telegram", "discord", "slack"]
    assert reveal(settings.telegram_bot_token) == "123:tg-secret"
    try:
        load_settings(telegram_webhook_url="https://example.org/hook", telegram_webhook_secret="not ok!secret")
    except ConfigError as exc:
        assert "TELEGRAM_WEBHOOK_SECRET" in str(exc) and "not ok!secret" not in str(exc), exc
    else:
        raise AssertionError("a webhook secret Telegram refuses was accepted")
