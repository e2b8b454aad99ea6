"""`/dashboard` on the platforms: the one-time link arrives privately, opens that person's own
page and nothing else; admins (as the platform says) edit their channel's settings, others are
refused. Real adapters against the loopback platform fakes, the web pages on a real aiohttp
server, plain HTTP requests as a browser would make them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.web import WebAdapter
from bot.http import HttpServer, build_http_app
from core.engine import Core
from tests.conftest import REPO, run_chat
from tests.fakes.llm import FakeLLM
from tests.fakes.telegram import FakeTelegram, private_chat
from tests.test_slack import free_port
from tests.test_telegram import ALICE, BOB, GROUP, Running, eventually, telegram, visible

__all__ = ["telegram"]  # the fixture, shared with tests/test_telegram.py

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/login\?token=[\w-]+)")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Web:
    """The web pages of one core, on their own port (the one HTTP server of `mnemo run`)."""

    def __init__(self, core: Core, port: int) -> None:
        self.adapter = WebAdapter(core)
        core.register(self.adapter)
        self.http = HttpServer(build_http_app(core), "127.0.0.1", port)
        for method, path, handler in self.adapter.routes():
            self.http.add_route(method, path, handler)


class Browser:
    """One person's cookie jar."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def get(self, url: str, status: int = 200) -> str:
        async with self.http.get(url) as resp:
            body = await resp.text()
            assert resp.status == status, (url, resp.status, body)
        if found := CSRF.search(body):
            self.csrf = found.group(1)
        return body

    async def post(self, url: str, data: dict[str, str], status: int = 200) -> str:
        async with self.http.post(url, data={"csrf": self.csrf, **data}) as resp:
            body = await resp.text()
            assert resp.status == status, (url, resp.status, body)
            return body


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
async def served(make_core: Any, fake_llm: FakeLLM, web_port: int) -> AsyncIterator[tuple[Core, str]]:
    base = f"http://127.0.0.1:{web_port}"
    core = await make_core(model="openai/fake-model", llm_api_base=fake_llm.api_base, llm_api_key="sk-test",
                           public_url=base)
    web = Web(core, web_port)
    await web.adapter.ensure_indexes()
    await web.http.start()
    yield core, base
    await web.adapter.stop()
    await web.http.stop()


async def test_telegram_dashboard_links_open_only_their_own_page_and_channels(
    served: tuple[Core, str], fake_llm: FakeLLM, telegram: FakeTelegram, make_core: Any
) -> None:
    core, base = served
    bot = Running(make_core, fake_llm, telegram)
    bot.core = core
    await bot.start()
    try:
        await _telegram_flow(core, base, telegram)
    finally:
        await bot.stop_all()


async def _telegram_flow(core: Core, base: str, telegram: FakeTelegram) -> None:
    group_key = f"telegram:{GROUP['id']}"
    telegram.member_status[(GROUP["id"], ALICE["id"])] = "administrator"
    telegram.push(telegram.message(GROUP, ALICE, "I host the book club on Fridays."))
    telegram.push(telegram.message(private_chat(ALICE), ALICE, "My locker code is 4817."))
    telegram.push(telegram.message(private_chat(BOB), BOB, "My bike lock combination is 2290."))
    await eventually(lambda: len(telegram.sent_messages(ALICE["id"])) and len(telegram.sent_messages(BOB["id"])),
                     what="answers to the DMs")
    for person in (ALICE, BOB):
        telegram.push(telegram.message(GROUP, person, "/dashboard"))
    links = {}
    for person in (ALICE, BOB):
        text = await eventually(lambda p=person: next(
            (visible(c) for c in telegram.sent_messages(p["id"]) if "login?token=" in visible(c)), None),
            what=f"{person['first_name']}'s link in a DM")
        assert "works once" in text and "15 minutes" in text
        links[person["id"]] = LINK.search(text).group(1)  # type: ignore[union-attr]
    assert not any("login?token=" in visible(c) for c in telegram.sent_messages(GROUP["id"]))  # never in the group

    alice_dm = await core.store.messages.find_one({"author_key": f"telegram:{ALICE['id']}", "is_dm": True})
    alice_group = await core.store.messages.find_one({"author_key": f"telegram:{ALICE['id']}", "text": {"$regex": "Fridays"}})
    assert alice_dm and alice_group
    # Facts about Alice (the learning issue's schema): one learned in the group, one that Bob
    # told Mnemo in his own DM, which must stay there.
    now = datetime.now(UTC)
    fact = {"about": "Alice", "about_key": f"telegram:{ALICE['id']}", "valid_from": now, "valid_until": None,
            "superseded_by": None, "status": "current", "created_at": now}
    await core.store.db["facts"].insert_many([
        {**fact, "_id": "Fgroup1", "text": "Alice hosts the book club", "scope": f"group:telegram:{GROUP['id']}",
         "conversation_key": group_key, "sources": [alice_group["_id"]]},
        {**fact, "_id": "Fbobdm1", "text": "Alice is planning a surprise party", "scope": f"dm:telegram:{BOB['id']}",
         "conversation_key": f"telegram:{BOB['id']}", "sources": []},
    ])
    alice, bob = Browser(), Browser()
    try:
        # A chat app's link preview doesn't use the link up.
        preview_agent = {"User-Agent": "TelegramBot (like TwitterBot)"}
        async with aiohttp.ClientSession(headers=preview_agent) as preview, preview.get(links[ALICE["id"]]) as resp:
            assert resp.status == 200 and "Set-Cookie" not in resp.headers
        # Alice: her own memories from her DM and the group, and her group's settings.
        async with alice.http.get(links[ALICE["id"]]) as resp:
            assert resp.status == 200
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert "4817" in await resp.text()  # her page, at once
        mine = await alice.get(f"{base}/me")
        assert "4817" in mine and "Fridays" in mine and "2290" not in mine
        assert "Alice hosts the book club" in mine and "surprise party" not in mine
        channels = await alice.get(f"{base}/admin")
        assert "Book club" in channels and f'value="{group_key}"' in channels
        saved = await alice.post(f"{base}/admin/settings", {"conversation": group_key, "respond_to": "all"})
        assert "respond_to: mentions -&gt; all" in saved
        assert f"telegram:{ALICE['id']}" in saved.split('id="audit-h"')[1]  # who, in the audit log
        assert (await core.settings.get(group_key)).respond_to == "all"

        # Bob: only his own data; Alice's DM is not reachable, her group's settings refused.
        await bob.get(links[BOB["id"]])
        his = await bob.get(f"{base}/me")
        assert "2290" in his and "4817" not in his and "Fridays" not in his
        refused = await bob.get(f"{base}/message/{alice_dm['_id']}", status=404)
        assert "4817" not in refused
        assert "Fridays" in await bob.get(f"{base}/message/{alice_group['_id']}")  # his group, in context
        assert f'value="{group_key}"' not in await bob.get(f"{base}/admin")
        await bob.post(f"{base}/admin/settings", {"conversation": group_key, "respond_to": "off"}, status=403)
        assert (await core.settings.get(group_key)).respond_to == "all"
        await bob.get(f"{base}/chat", status=403)  # chat is the web platform's DM
        gone = await bob.post(f"{base}/me/forget", {"id": alice_dm["_id"]})
        assert "Not found" in gone
        assert await core.store.messages.find_one({"_id": alice_dm["_id"]}) is not None

        # The link worked once.
        await Browser().get(links[ALICE["id"]], status=403)

        # Alice exports (the /export JSON), forgets her DM message, opts out.
        async with alice.http.get(f"{base}/me/export") as resp:
            assert "attachment" in resp.headers["Content-Disposition"]
            exported = json.loads(await resp.read())
        assert any("4817" in m["text"] for m in exported["messages"])
        done = await alice.post(f"{base}/me/forget", {"id": alice_dm["_id"]})
        assert "Forgot 1 item" in done and "4817" not in done
        assert await core.store.messages.find_one({"_id": alice_dm["_id"]}) is None
        await alice.post(f"{base}/me/optout", {"choice": "optout"})
        assert (await core.store.get_user(f"telegram:{ALICE['id']}"))["opted_out"] is True
        await alice.post(f"{base}/logout", {})
        await alice.get(f"{base}/me", status=401)
    finally:
        await asyncio.gather(alice.http.close(), bob.http.close())


def test_dashboard_without_a_public_url_says_it_is_not_configured(base_env: dict[str, str]) -> None:
    out = run_chat(["/dashboard", "/help"], base_env, "--user", "sam")
    assert out.returncode == 0, out.stderr
    assert "dashboard isn't configured" in out.stdout and "MNEMO_PUBLIC_URL" in out.stdout
    assert "/dashboard" in out.stdout.split("isn't configured")[1]  # listed by /help
    assert "login?token=" not in out.stdout


async def test_discord_dashboard_is_ephemeral_and_manage_channels_admins_get_the_channel(
    served: tuple[Core, str],
) -> None:
    from adapters.discord import DiscordAdapter
    from tests.fakes.discord import ALICE as D_ALICE
    from tests.fakes.discord import BOB as D_BOB
    from tests.fakes.discord import CHANNEL_ID, EPHEMERAL, FakeDiscord

    core, base = served
    fake = FakeDiscord().start()
    adapter = DiscordAdapter(core, token=fake.token, api_base=fake.api_base)
    core.register(adapter)
    task = asyncio.create_task(adapter.run())
    alice, bob = Browser(), Browser()
    try:
        await fake.until(lambda: fake.ready or task.done(), what="the bot to connect")
        assert "dashboard" in {c["name"] for c in fake.commands or []}
        fake.dispatch("MESSAGE_CREATE", fake.message("The standup moved to 9:45.", author=D_ALICE))
        await fake.until(lambda: core.runner.pending == 0, what="the message to be stored")
        for person in (D_ALICE, D_BOB):
            fake.dispatch("INTERACTION_CREATE", fake.interaction("dashboard", author=person))
        await fake.until(lambda: len(fake.followups) == 2, what="two /dashboard answers")
        assert all(f["flags"] & EPHEMERAL for f in fake.followups) and fake.sent == []
        links = [LINK.search(f["content"]).group(1) for f in fake.followups]  # type: ignore[union-attr]
        channel_key = f"discord:{CHANNEL_ID}"
        for browser, link in zip((alice, bob), links, strict=True):
            await browser.get(link)
        pages = {}
        for browser in (alice, bob):
            me = await browser.get(f"{base}/me")
            pages[(await browser.get(f"{base}/admin")).count(f'value="{channel_key}"'), "standup" in me] = browser
        # Bob has Manage Channels: the channel is his to edit; Alice (who said it) sees her memory.
        assert set(pages) == {(0, True), (1, False)}
        await pages[1, False].post(f"{base}/admin/settings", {"conversation": channel_key, "mode": "reasoning"})
        await pages[0, True].post(f"{base}/admin/settings", {"conversation": channel_key, "mode": "fast"}, status=403)
        assert (await core.settings.get(channel_key)).mode == "reasoning"
    finally:
        await asyncio.gather(alice.http.close(), bob.http.close())
        await adapter.stop()
        await asyncio.wait_for(task, 15)
        fake.stop()


def test_mnemo_run_serves_the_dashboard_for_slack_slash_command(
    base_env: dict[str, str], tmp_path: Path,
) -> None:
    from tests.fakes.slack import FakeSlack, channel_message, event_callback, sign, slash_form
    from tests.test_slack import SECRET, _post_sync, _wait_sync

    fake = FakeSlack().start()
    fake.add_user("U0ALICE", "Alice")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**base_env, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_API_BASE": fake.api_base, "MNEMO_HTTP_PORT": str(port), "MNEMO_PUBLIC_URL": base}
    log_path = tmp_path / "mnemo.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=env, cwd=str(REPO),
                                stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        def served_page() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/", timeout=2) as response:
                    return response.status == 200 and "Content-Security-Policy" in response.headers
            except OSError:
                return False

        _wait_sync(served_page, 180, proc)
        said = json.dumps(event_callback(channel_message("C0GENERAL", "U0ALICE", "Deploys freeze on Fridays.")))
        assert _post_sync(f"{base}/slack/events", said, {"Content-Type": "application/json", **sign(SECRET, said)}) == 200
        form = slash_form("dashboard", user="U0ALICE", channel="C0GENERAL", response_url=f"{fake.url}/response/1")
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(SECRET, form)}
        assert _post_sync(f"{base}/slack/events", form, headers) == 200
        private = _wait_sync(lambda: [c for c in fake.calls_to("chat.postEphemeral") if "login?token=" in c.args["text"]],
                             60, proc)
        assert private[0].args["user"] == "U0ALICE" and fake.posts() == []
        link = LINK.search(private[0].args["text"]).group(1)  # type: ignore[union-attr]

        async def visit() -> str:
            browser = Browser()
            try:
                await browser.get(link)
                return await browser.get(f"{base}/me")
            finally:
                await browser.http.close()

        assert "Deploys freeze on Fridays." in asyncio.run(visit())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fake.stop()
    assert proc.returncode == 0, log_path.read_text()
    assert "Fridays" not in log_path.read_text()  # no message content in the logs


async def test_links_are_stored_hashed_and_refused_after_15_minutes(served: tuple[Core, str]) -> None:
    from datetime import timedelta

    from core.models import utcnow
    from core.web_links import token_hash

    core, _ = served
    fresh, stale = [await core.web_logins.create_link("web", "sam", "sam") for _ in range(2)]
    links = core.store.db["web_links"]
    for url in (fresh, stale):
        token = url.split("token=", 1)[1]
        stored = await links.find_one({"_id": token_hash(token)})
        assert stored is not None and token not in str(stored)  # only the hash is kept
        assert timedelta(minutes=14) < stored["expires_at"] - utcnow() <= timedelta(minutes=15)
    # Sixteen minutes later (the clock moved on, as far as the stored expiry is concerned):
    stale_token = stale.split("token=", 1)[1]
    await links.update_one({"_id": token_hash(stale_token)}, {"$set": {"expires_at": utcnow() - timedelta(minutes=1)}})
    browser = Browser()
    try:
        assert "expired or was already used" in await browser.get(stale, status=403)
        await browser.get(fresh)
        sessions = [doc async for doc in core.store.db["web_sessions"].find({})]
        cookie = next(c.value for c in browser.http.cookie_jar if c.key == "mnemo_session")
        assert [s["_id"] for s in sessions] == [token_hash(cookie)]
    finally:
        await browser.http.close()


async def test_people_page_pages_searches_and_forgets_several_or_all(served: tuple[Core, str]) -> None:
    from datetime import timedelta

    from core.models import Message

    core, base = served
    start = datetime(2026, 3, 1, tzinfo=UTC)
    said = [
        Message(platform="web", conversation_id="dm-sam", message_id=f"h{n}", author_id="sam", author_name="sam",
                text=f"Note {n:02d}: the {'red' if n % 2 else 'blue'} folder (v1.2+)", is_dm=True,
                ts=start + timedelta(minutes=n))
        for n in range(25)
    ]
    assert await core.ingest_history([(m, []) for m in said]) == 25
    browser = Browser()
    try:
        await browser.get(await core.web_logins.create_link("web", "sam", "sam", dm_conversation="web:dm-sam"))
        first = await browser.get(f"{base}/me")
        assert "(25)" in first and first.count('name="id"') == 20 and "Page 1 of 2" in first
        assert "Note 24" in first and "Note 04" not in first  # newest first
        second = await browser.get(f"{base}/me?page=2")
        assert second.count('name="id"') == 5 and "Note 00" in second and 'rel="prev"' in second
        # Search is literal (no pattern syntax), case-insensitive.
        found = await browser.get(f"{base}/me?q=RED+folder+(v1.2%2B)")
        assert found.count('name="id"') == 12 and "blue" not in found
        assert "Nothing matches" in await browser.get(f"{base}/me?q=.*")

        ids = [d["_id"] async for d in core.store.messages.find({"author_key": "web:sam"}).sort("ts", 1).limit(2)]
        several = await browser.http.post(f"{base}/me/forget", data=[("csrf", browser.csrf), ("id", ids[0]),
                                                                      ("id", ids[1])])
        assert "Forgot 2 items" in await several.text()
        assert await core.store.messages.count_documents({"author_key": "web:sam"}) == 23
        refused = await browser.post(f"{base}/me/forget-all", {})
        assert "confirm" in refused and await core.store.messages.count_documents({"author_key": "web:sam"}) == 23
        everything = await browser.post(f"{base}/me/forget-all", {"confirm": "yes"})
        assert "forgot everything" in everything and "(0)" in everything
        assert await core.store.messages.count_documents({"author_key": "web:sam"}) == 0
    finally:
        await browser.http.close()
