"""Two people chat through the chat example's web page, in a real headless chromium."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cdp import Page, chromium, find_chromium
from .examples_util import ROOT, ExampleServer

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ExampleServer]:
    find_chromium()  # skip (or fail in CI) before starting anything
    server = ExampleServer("examples.chat", f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}").start()
    yield server
    server.kill()


def texts(selector: str) -> str:
    return (
        f"JSON.stringify([...document.querySelectorAll({json.dumps(selector)})]"
        ".map(li => li.textContent))"
    )


async def say(page: Page, text: str) -> None:
    await page.evaluate(
        f"document.getElementById('text').value = {json.dumps(text)};"
        "document.getElementById('send').click(); true"
    )


async def test_two_people_chat_in_chromium(chat_server: ExampleServer, tmp_path: Path) -> None:
    async with chromium(tmp_path / "profile") as browser:
        alice = await browser.open_page(f"{chat_server.url}/?user=alice&room=lobby")
        bob = await browser.open_page(f"{chat_server.url}/?user=bob&room=lobby")
        for page in (alice, bob):
            await page.wait_for("document.getElementById('status').textContent === 'connected'")

        await say(alice, "Hi Bob! Are you there?")
        await bob.wait_for(
            "[...document.querySelectorAll('#messages li.theirs')]"
            ".some(li => li.textContent === 'aliceHi Bob! Are you there?')"
        )
        await say(bob, "Hello Alice, loud and clear.")
        await alice.wait_for(
            "[...document.querySelectorAll('#messages li.theirs')]"
            ".some(li => li.textContent === 'bobHello Alice, loud and clear.')"
        )
        # Bob's connection drops; what Alice says meanwhile reaches him when the
        # page reconnects with the last id it saw.
        await bob.evaluate("socket.close(); true")
        await bob.wait_for("document.getElementById('status').textContent === 'reconnecting'")
        await say(alice, "Great, the log keeps every word.")
        await alice.wait_for("document.querySelectorAll('#messages li.mine').length === 2")
        await bob.wait_for("document.getElementById('status').textContent === 'connected'")
        await bob.wait_for("document.querySelectorAll('#messages li.theirs').length === 2")
        assert await alice.evaluate("document.getElementById('join').hidden") is True

        alice_sees = json.loads(await alice.evaluate(texts("#messages li")))
        bob_sees = json.loads(await bob.evaluate(texts("#messages li")))
        assert alice_sees == [
            "you joined #lobby as alice",
            "aliceHi Bob! Are you there?",
            "bobHello Alice, loud and clear.",
            "aliceGreat, the log keeps every word.",
        ]
        assert bob_sees == [
            "you joined #lobby as bob",
            "aliceHi Bob! Are you there?",
            "bobHello Alice, loud and clear.",
            "aliceGreat, the log keeps every word.",
        ]
        assert await alice.evaluate("document.getElementById('errors').textContent") == ""
        await alice.screenshot(ARTIFACTS / "chat-alice.png")
        await bob.screenshot(ARTIFACTS / "chat-bob.png")
    assert (ARTIFACTS / "chat-alice.png").stat().st_size > 5000
