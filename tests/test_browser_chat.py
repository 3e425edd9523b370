"""The chat example's web page in a real headless chromium, driven by Playwright.

The page logs in (an HttpOnly cookie), follows its channel with an EventSource
that authenticates by that cookie, and posts what its user says. Debian's
chromium is used, never a browser Playwright would download: without it (or
without the playwright package) the tests are skipped, and in CI they fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .examples_util import ROOT, ExampleServer, bearer

ARTIFACTS = ROOT / "test-artifacts"


def start_chat(tmp_path: Path, *args: str, **env: str) -> ExampleServer:
    return ExampleServer(
        "examples.chat", f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", args=args, env=env
    ).start()


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ExampleServer]:
    server = start_chat(tmp_path)
    yield server
    server.kill()


async def open_person(browser: Any, url: str) -> Any:
    # Each person in a browser context of their own: separate cookies and storage.
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    page = await context.new_page()
    await page.goto(url)
    return page


async def say(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def texts(page: Any, selector: str = "#messages li") -> list[str]:
    found: list[str] = await page.locator(selector).all_text_contents()
    return found


async def connected(page: Any) -> None:
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'")


async def test_two_people_chat_in_chromium(browser: Any, chat_server: ExampleServer) -> None:
    alice = await open_person(browser, f"{chat_server.url}/?user=alice&room=lobby")
    bob = await open_person(browser, f"{chat_server.url}/?user=bob&room=lobby")
    for page in (alice, bob):
        await connected(page)

    # The token is in a cookie the page's own script cannot read.
    cookies = {cookie["name"]: cookie for cookie in await alice.context.cookies()}
    assert cookies["eventhub_token"]["httpOnly"] is True
    assert cookies["eventhub_token"]["sameSite"] == "Strict"
    assert "eventhub_token" not in await alice.evaluate("document.cookie")

    await say(alice, "Hi Bob! Are you there?")
    await bob.locator("#messages li.theirs", has_text="Hi Bob! Are you there?").wait_for()
    await say(bob, "Hello Alice, loud and clear.")
    await alice.locator("#messages li.theirs", has_text="Hello Alice, loud and clear.").wait_for()

    # Bob's connection drops; what Alice says meanwhile reaches him when the
    # page reconnects with the last id it saw.
    await bob.evaluate("reconnect()")
    await bob.wait_for_function("document.getElementById('status').textContent === 'reconnecting'")
    await say(alice, "Great, the log keeps every word.")
    await alice.wait_for_function("document.querySelectorAll('#messages li.mine').length === 2")
    await connected(bob)
    await bob.wait_for_function("document.querySelectorAll('#messages li.theirs').length === 2")
    assert await alice.evaluate("document.getElementById('join').hidden") is True

    conversation = [
        "aliceHi Bob! Are you there?",
        "bobHello Alice, loud and clear.",
        "aliceGreat, the log keeps every word.",
    ]
    assert await texts(alice) == ["you joined #lobby as alice", *conversation]
    assert await texts(bob) == ["you joined #lobby as bob", *conversation]
    assert await alice.evaluate("document.getElementById('errors').textContent") == ""
    ARTIFACTS.mkdir(exist_ok=True)
    await alice.screenshot(path=ARTIFACTS / "chat-alice.png")
    await bob.screenshot(path=ARTIFACTS / "chat-bob.png")
    assert (ARTIFACTS / "chat-alice.png").stat().st_size > 5000


# An EventSource on /v1/stream: "open" and the ready event's data, or "refused"
# when the browser gives up on it (a 401 closes an EventSource for good).
OPEN_STREAM = """() => new Promise((resolve) => {
  const source = new EventSource("/v1/stream?topic=room:lobby");
  source.addEventListener("ready", (m) => { source.close(); resolve("open " + m.data); });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) resolve("refused");
  };
})"""


async def test_event_source_authenticates_by_the_cookie(
    browser: Any, chat_server: ExampleServer
) -> None:
    page = await open_person(browser, f"{chat_server.url}/")
    assert await page.evaluate(OPEN_STREAM) == "refused"
    status = await page.evaluate("() => fetch('/v1/stream?topic=room:lobby').then((r) => r.status)")
    assert status == 401

    await page.fill("#user", "frank")
    await page.click("#join-button")
    await connected(page)
    opened = await page.evaluate(OPEN_STREAM)
    assert opened.startswith("open ")
    assert '"subscriber":"frank:' in opened  # the server named it after the cookie's sub

    # Logged out, the same page is refused again.
    assert await page.evaluate("() => fetch('/logout', {method: 'POST'}).then((r) => r.status)")
    assert await page.evaluate(OPEN_STREAM) == "refused"


@pytest.mark.slow
async def test_page_keeps_every_message_across_token_expiries(browser: Any, tmp_path: Path) -> None:
    # Three-second tokens and no leeway: the server ends the page's stream every
    # few seconds and the browser drops the expired cookie; the page logs in
    # again and resumes after the last id it saw.
    server = start_chat(tmp_path, "--token-ttl", "3", EVENTHUB_AUTH_LEEWAY="0")
    try:
        page = await open_person(browser, f"{server.url}/?user=gina&room=lobby")
        await connected(page)
        await page.evaluate(
            "window.welcomes = 0;"
            "new MutationObserver(() => { if ($('status').textContent === 'connected') "
            "window.welcomes++; }).observe($('status'), {childList: true})"
        )
        said: list[str] = []
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 40
            while await page.evaluate("window.welcomes") < 2 or len(said) < 8:
                assert time.monotonic() < deadline, "the page did not reconnect twice"
                # A publisher with tokens as short-lived as the page's, fresh for each.
                minted = await http.post(f"{server.url}/token", json={"user": "bot"})
                text = f"tick {len(said)}"
                response = await http.post(
                    f"{server.url}/v1/topics/room:lobby/events",
                    json={"payload": {"type": "message", "user": "bot", "text": text}},
                    headers=bearer(minted.json()["token"]),
                )
                assert response.status_code == 201, response.text
                said.append(text)
                # Slower than the channel stream's idle check (api/channels.py
                # SHUTDOWN_CHECK, 0.5 s): that is where it looks at the token's exp.
                await page.wait_for_timeout(700)
        expected = [f"bot{text}" for text in said]
        await page.wait_for_function(
            f"document.querySelectorAll('#messages li.theirs').length >= {len(said)}"
        )
        await page.wait_for_timeout(300)
        assert await texts(page, "#messages li.theirs") == expected
        await connected(page)
        await page.screenshot(path=ARTIFACTS / "chat-expiry.png")
    finally:
        server.kill()
