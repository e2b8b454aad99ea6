"""`mnemo web` as its operator uses it: a real `mnemo web` process on loopback, Debian's
chromium driven headless through chromium-driver, the loopback model; and the security
properties checked with plain HTTP requests (aiohttp) on the same server."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import MongoClient

from tests.conftest import REPO, run_chat
from tests.fakes.llm import FakeLLM

SCREENS = os.environ.get("MNEMO_WEB_SCREENS")  # also copy the screenshots worth keeping here
LOGIN = re.compile(r"(http://127\.0\.0\.1:\d+/login\?token=[\w-]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebProcess:
    def __init__(self, proc: subprocess.Popen[str], base: str, login: str, stderr: Path) -> None:
        self.proc, self.base, self.login, self.stderr = proc, base, login, stderr


@pytest.fixture
def mnemo_web(base_env: dict[str, str], fake_llm: FakeLLM, tmp_path: Path) -> Iterator[WebProcess]:
    port = free_port()
    stderr = tmp_path / "mnemo-web.stderr"
    env = {**base_env, **fake_llm.env()}
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "web", "--port", str(port)],
            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not (found := LOGIN.search(stderr.read_text())):
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "no login link on stderr: " + stderr.read_text()
            time.sleep(0.2)
        assert f"http://127.0.0.1:{port}/" in stderr.read_text()
        yield WebProcess(proc, f"http://127.0.0.1:{port}", found.group(1), stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_chromium(profile: Path, javascript: bool = True) -> Any:
    """Debian's chromium, headless, through Debian's chromium-driver, on a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1000,1300"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    driver.implicitly_wait(0)
    return driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


# Every visible form control has a label a screen reader announces.
UNLABELLED = """return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.outerHTML);"""


def wait_for(check: Any, timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - element not there yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def say(driver: Any, text: str, *, enter: bool = True) -> Any:
    """Type into the chat's textarea and send; returns Mnemo's new reply element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = len(driver.find_elements(By.CSS_SELECTOR, "#log .msg.bot"))
    box = driver.find_element(By.CSS_SELECTOR, "textarea#message")
    box.send_keys(text)
    if enter:
        box.send_keys(Keys.ENTER)  # the page's script sends on Enter
    else:
        driver.find_element(By.CSS_SELECTOR, "#composer button[type=submit]").click()
    return wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#log .msg.bot")) > before
                    and driver.find_elements(By.CSS_SELECTOR, "#log .msg.bot")[-1], what=f"reply to {text!r}")


def shot(driver: Any, tmp_path: Path, name: str, keep: bool = False) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if keep and SCREENS:
        Path(SCREENS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENS) / path.name)
    return path


def test_operator_chats_with_citations_and_manages_memory_in_a_browser(
    mnemo_web: WebProcess, browser: Any, tmp_path: Path, mongo_uri: str, db_name: str, base_env: dict[str, str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, base = browser, mnemo_web.base
    driver.get(mnemo_web.login)
    wait_for(lambda: driver.current_url == f"{base}/chat", what="chat page after login")
    cookie = driver.get_cookie("mnemo_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    say(driver, "My locker code is 4817 and my gym is Atlas.")
    say(driver, "I work at Globex.")  # something Mnemo learns a fact from
    say(driver, "Ben's favourite colour is teal.")
    answer = say(driver, "What is my locker code?", enter=False)
    assert "4817" in answer.text
    [footnote] = answer.find_elements(By.CSS_SELECTOR, ".footnotes a")
    assert re.match(r"\[1\] .*4817", footnote.text), footnote.text
    shot(driver, tmp_path, "chat", keep=True)

    # The footnote opens the cited message in its conversation.
    footnote.click()
    cited = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "li.cited"), what="message in context")
    assert "My locker code is 4817" in cited.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "ol.context li")) >= 3  # with its neighbours
    source_id = driver.current_url.rsplit("/", 1)[-1]

    # What Mnemo learned (in the background, once the chat went quiet), with its source.
    driver.find_element(By.LINK_TEXT, "My data").click()

    def learned() -> Any:
        driver.refresh()
        section = driver.find_element(By.CSS_SELECTOR, "section[aria-labelledby=facts-h]")
        return section if "works at Globex" in section.text else None

    facts = wait_for(learned, what="the learned fact")
    assert "I work at Globex." in facts.find_element(By.CSS_SELECTOR, ".sources").text
    fact_id = facts.find_element(By.CSS_SELECTOR, "input[name=id]").get_attribute("value")
    assert fact_id.startswith("F")
    memories = driver.find_element(By.ID, "memories").text
    assert "4817" in memories and "teal" in memories
    shot(driver, tmp_path, "people", keep=True)

    # Search narrows the list.
    search = driver.find_element(By.ID, "q")
    search.send_keys("teal")
    search.submit()
    wait_for(lambda: "teal" in driver.find_element(By.ID, "memories").text
             and "4817" not in driver.find_element(By.ID, "memories").text, what="search results")

    # Forget the locker-code message and the fact at once: gone from the page, and from the next answer.
    driver.get(f"{base}/me")
    driver.find_element(By.ID, f"pick-{source_id}").click()
    driver.find_element(By.ID, f"pick-{fact_id}").click()
    driver.find_element(By.CSS_SELECTOR, "#forget-form button[type=submit]").click()
    wait_for(lambda: driver.switch_to.alert, what="confirmation").accept()
    wait_for(lambda: "Forgot 2 items" in driver.find_element(By.CSS_SELECTOR, ".notice").text, what="forgot notice")
    assert "4817" not in driver.find_element(By.ID, "memories").text
    assert "works at Globex" not in driver.page_source
    driver.find_element(By.LINK_TEXT, "Chat").click()
    again = say(driver, "What is my locker code?")
    assert "4817" not in again.text
    assert source_id not in driver.page_source
    # /dashboard in the web chat: a fresh one-time link back here, as a link.
    link = say(driver, "/dashboard").find_element(By.CSS_SELECTOR, "a[href*='/login?token=']")
    assert link.get_attribute("href").startswith(f"{base}/login?token=")
    driver.set_window_size(390, 844)  # a phone: nothing wider than the screen
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(driver, tmp_path, "chat-phone", keep=True)
    driver.set_window_size(1000, 1300)

    # The operator administers the web platform: a setting changes, validated as in chat.
    driver.find_element(By.LINK_TEXT, "Channels").click()
    retention = wait_for(lambda: driver.find_element(By.NAME, "retention_days"), what="settings form")
    retention.clear()
    retention.send_keys("30")
    Select(driver.find_element(By.NAME, "mode")).select_by_value("reasoning")
    driver.find_element(By.CSS_SELECTOR, ".channel button[type=submit]").click()
    saved = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, ".notice"), what="saved notice").text
    assert "mode: fast -> reasoning" in saved and "retention_days: forever -> 30" in saved
    assert "forever -> 30" in driver.find_element(By.CSS_SELECTOR, "section[aria-labelledby=audit-h]").text
    retention = driver.find_element(By.NAME, "retention_days")
    retention.clear()
    retention.send_keys("soon")
    driver.find_element(By.CSS_SELECTOR, ".channel button[type=submit]").click()
    error = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, ".notice.error"), what="validation error")
    assert "Invalid value for retention_days" in error.text
    assert driver.find_element(By.NAME, "retention_days").get_attribute("value") == "soon"  # kept to correct
    assert "Health" in driver.page_source and "Queue depth" in driver.page_source
    shot(driver, tmp_path, "admin", keep=True)

    # Another person's message (Mallory on the console, same database) is not reachable.
    other_env = {**base_env, "MNEMO_DATA_DIR": str(tmp_path / "other")}
    assert run_chat(["My passport number is X1234567."], other_env, "--user", "mallory").returncode == 0
    with MongoClient(mongo_uri) as client:
        theirs = client[db_name]["messages"].find_one({"author_key": "console:mallory"})
    driver.get(f"{base}/message/{theirs['_id']}")
    assert "isn't yours to see" in driver.find_element(By.CSS_SELECTOR, ".notice.error").text
    assert "X1234567" not in driver.page_source
    driver.get(f"{base}/me?q=passport")
    assert "X1234567" not in driver.page_source

    driver.get(f"{base}/chat")
    assert driver.switch_to.active_element.tag_name == "textarea"  # the script puts the cursor there
    for path in ("/chat", "/me", "/admin"):
        driver.get(f"{base}{path}")
        assert driver.execute_script(UNLABELLED) == [], path

    # With JavaScript off, the same session chats through a plain form post.
    plain = start_chromium(tmp_path / "chromium-nojs", javascript=False)
    try:
        plain.get(f"{base}/")
        plain.add_cookie({"name": "mnemo_session", "value": cookie["value"], "path": "/"})
        plain.get(f"{base}/chat")
        assert plain.switch_to.active_element.tag_name != "textarea"  # the page's script did not run
        reply = say(plain, "What colour does Ben like?", enter=False)
        assert "teal" in reply.text and reply.find_elements(By.CSS_SELECTOR, ".footnotes a")
    finally:
        plain.quit()

    # The login link worked once: opened again, it is refused.
    driver.get(mnemo_web.login)
    assert "expired or was already used" in driver.find_element(By.CSS_SELECTOR, ".notice.error").text

    asyncio.run(_security_checks(mnemo_web, cookie["value"]))


async def _security_checks(server: WebProcess, session_cookie: str) -> None:
    base = server.base
    async with aiohttp.ClientSession() as http:
        # The link worked once; the second time it is refused.
        async with http.get(server.login, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "expired or was already used" in await resp.text()
            assert "Set-Cookie" not in resp.headers
        # Every page carries a CSP that allows only Mnemo's own assets; no inline script.
        async with http.get(f"{base}/") as resp:
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "<script>" not in await resp.text()
        async with http.get(f"{base}/me", allow_redirects=False) as resp:
            assert resp.status == 401  # no session, no page
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"mnemo_session": session_cookie}, aiohttp.client.URL(base))
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(f"{base}/me") as resp:
            assert resp.status == 200
            page = await resp.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        teal = re.search(r'name="id" value="(m\w+)" id="pick-\1"><label[^>]*><span class="text">Ben', page)
        assert teal is not None, page
        # A change without the CSRF token (or with another) is refused and changes nothing.
        for form in ({"id": teal.group(1)}, {"id": teal.group(1), "csrf": "forged"}):
            async with http.post(f"{base}/me/forget", data=form) as resp:
                assert resp.status == 403
        async with http.get(f"{base}/me") as resp:
            assert "Ben&#x27;s favourite colour is teal" in await resp.text()
        # A page of a channel this session doesn't administer is refused.
        async with http.post(f"{base}/admin/settings",
                             data={"csrf": csrf, "conversation": "telegram:-100123", "respond_to": "all"}) as resp:
            assert resp.status == 403
        # Plain form posts work with JavaScript off: the chat answers a form POST.
        async with http.post(f"{base}/chat", data={"csrf": csrf, "text": "what colour does Ben like?"}) as resp:
            reply = await resp.text()
            assert resp.status == 200 and "colour is teal" in reply and 'aria-label="source 1"' in reply
