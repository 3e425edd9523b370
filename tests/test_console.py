"""The auditors' console (``GET /console``) in a real headless chromium, driven by
Playwright, against a real server on SQLite and on PostgreSQL.

Debian's chromium is used, never a browser Playwright would download: without it
(or without the playwright package) the browser tests are skipped, and in CI
they fail.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from eventhub_log.tokens import mint_token

from .server import Server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SECRET = "console-test-secret-" + "x" * 32
XSS = "<img src=x onerror=alert(1)>"
SCRIPT_XSS = "<script>window.pwned = true</script>"


@pytest.fixture
def secured(database_url: str) -> Iterator[Server]:
    server = Server(database_url, env={"EVENTHUB_AUTH_SECRET": SECRET}).start()
    yield server
    server.kill()


def admin_token(sub: str = "auditor") -> str:
    return mint_token(sub, {"admin": True}, secret=SECRET)


async def publish(server: Server, topic: str, payload: Any, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            f"/v1/topics/{topic}/events", json={"payload": payload}, headers=headers
        )
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


async def open_console(browser: Any, server: Server, width: int = 1100) -> tuple[Any, list[str]]:
    context = await browser.new_context(viewport={"width": width, "height": 800})
    page = await context.new_page()
    problems: list[str] = []

    # The page's own policy violations and script errors are bugs of the page.
    def console_message(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", console_message)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    await page.goto(f"{server.url}/console")
    return page, problems


async def until(page: Any, expression: str, arg: Any = None, timeout: float = 10.0) -> None:
    """Poll ``expression`` (a function of ``arg``) from here until it is true.

    Not ``page.wait_for_function``: that re-evaluates its text inside the page,
    which the console's policy (no eval) rightly refuses."""
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"never true: {expression}"
        await asyncio.sleep(0.05)


async def live(page: Any) -> None:
    await until(page, "() => document.getElementById('live').dataset.state === 'live'")


async def enter_token(page: Any, token: str) -> None:
    field = page.get_by_test_id("token-input")
    await field.wait_for()
    await field.fill(token)
    await field.press("Enter")
    await until(page, "() => document.getElementById('token-panel').hidden")


async def seqs(page: Any) -> list[int]:
    found: list[str] = await page.eval_on_selector_all(
        "[data-testid=event-row]", "rows => rows.map((row) => row.dataset.seq)"
    )
    return [int(seq) for seq in found]


async def wait_for_seqs(page: Any, expected: list[int]) -> None:
    await until(
        page,
        "(expected) => JSON.stringify([...document.querySelectorAll('[data-testid=event-row]')]"
        ".map((row) => Number(row.dataset.seq))) === JSON.stringify(expected)",
        expected,
    )


async def set_filters(page: Any, **values: str) -> None:
    for name, value in values.items():
        field = page.locator(f"#filters [name={name}]")
        if name == "order":
            await field.select_option(value)
        else:
            await field.fill(value)
    await page.get_by_role("button", name="Apply filters").click()


async def verify(page: Any) -> str:
    await page.get_by_role("button", name="Verify the hash chain").click()
    status = page.get_by_test_id("verify-status")
    await until(
        page,
        "() => ['verified', 'broken'].includes("
        "document.querySelector('[data-testid=verify-status]').textContent)"
        " || !document.getElementById('error').hidden",
    )
    found: str = await status.text_content()
    return found


async def tamper(database_url: str, topic: str, seq: int) -> None:
    """Rewrite one stored payload behind the hub's back, as an intruder with
    database access would."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                text("UPDATE events SET payload = :payload WHERE topic = :topic AND seq = :seq"),
                {"payload": json.dumps({"amount": 1_000_000}), "topic": topic, "seq": seq},
            )
            assert result.rowcount == 1
    finally:
        await engine.dispose()


async def test_page_and_files_need_no_token_and_carry_a_strict_policy(secured: Server) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        page = await http.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in page.text  # the script is a file, never inline
        for name, kind in [("console.js", "text/javascript"), ("console.css", "text/css")]:
            asset = await http.get(f"/console/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(kind)
            assert asset.headers["x-content-type-options"] == "nosniff"
        unknown = await http.get("/console/..%2Fapp.py")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
        # The data is still behind the key.
        assert (await http.get("/v1/topics")).status_code == 401


async def test_an_auditor_walks_through_a_topic(
    browser: Any, secured: Server, database_url: str
) -> None:
    token = admin_token()
    for n in range(1, 6):
        await publish(secured, "audit:ledger", {"entry": n, "amount": n * 10}, token)
    await publish(secured, "room:lobby", {"text": "hi"}, token)

    page, problems = await open_console(browser, secured)
    # The hub answered 401: the token entry shows, with the hub's reason as text.
    await page.get_by_test_id("token-input").wait_for()
    assert "needs a token" in await page.locator("#token-reason").text_content()
    await page.get_by_test_id("error").wait_for()
    assert "401 unauthorized" in await page.get_by_test_id("error").text_content()

    # A bad token is refused and the entry stays.
    await page.get_by_test_id("token-input").fill("not-a-token")
    await page.get_by_test_id("token-input").press("Enter")
    await until(page, "() => !document.getElementById('token-panel').hidden")
    assert "refused the token" in await page.locator("#token-reason").text_content()

    await enter_token(page, token)
    rows = page.get_by_test_id("topic-row")
    await rows.first.wait_for()
    names = await page.eval_on_selector_all(
        "[data-testid=topic-row]", "rows => rows.map((row) => row.dataset.topic)"
    )
    assert names == ["audit:ledger", "room:lobby"]
    ledger = rows.filter(has_text="audit:ledger")
    assert "5 events" in await ledger.inner_text()

    # Opened from the keyboard.
    await ledger.focus()
    await page.keyboard.press("Enter")
    await wait_for_seqs(page, [1, 2, 3, 4, 5])
    first = page.get_by_test_id("event-row").first
    assert '"amount": 10' in await first.inner_text()
    assert "publisher: auditor" in await first.inner_text()
    await live(page)

    # Filters and paging by the next link.
    await set_filters(page, after_seq="1", limit="2")
    await wait_for_seqs(page, [2, 3])
    await page.get_by_role("button", name="Next page").click()
    await wait_for_seqs(page, [4, 5])
    assert await page.get_by_role("button", name="Next page").is_disabled()

    # On the last page, oldest first: a live event is appended.
    await publish(secured, "audit:ledger", {"entry": 6, "amount": 60}, token)
    await wait_for_seqs(page, [4, 5, 6])
    await page.get_by_role("button", name="Previous page").click()
    await wait_for_seqs(page, [2, 3])

    await set_filters(page, after_seq="", limit="100", order="desc")
    await wait_for_seqs(page, [6, 5, 4, 3, 2, 1])
    assert await page.get_by_test_id("live-status").get_attribute("data-state") == "off"

    # An API error is shown as the hub's text, and the page stays.
    await set_filters(page, order="asc", since="yesterday")
    await page.get_by_test_id("error").wait_for()
    assert "400 invalid_time" in await page.get_by_test_id("error").text_content()
    await set_filters(page, since="")
    await wait_for_seqs(page, [1, 2, 3, 4, 5, 6])

    # The console's own stream is a subscriber now.
    await page.locator("[data-testid=subscriber]", has_text="auditor:").wait_for()

    # Export: the whole filtered range as NDJSON, fetched with the token.
    await set_filters(page, after_seq="2", limit="1")
    await wait_for_seqs(page, [3])
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Export NDJSON").click()
    download = await download_info.value
    assert download.suggested_filename == "audit_ledger.ndjson"
    saved = await asyncio.to_thread(Path(await download.path()).read_text)
    exported = [json.loads(line) for line in saved.splitlines()]
    assert [event["seq"] for event in exported] == [3, 4, 5, 6]
    assert all(len(event["hash"]) == 64 for event in exported)

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "console-desktop.png", full_page=True)

    assert await verify(page) == "verified"
    assert "seq 1 to 6 hold" in await page.locator("#verify-detail").text_content()
    await tamper(database_url, "audit:ledger", 2)
    assert await verify(page) == "broken"
    assert "first bad seq 2" in await page.locator("#verify-detail").text_content()
    await page.screenshot(path=ARTIFACTS / "console-broken.png", full_page=True)

    # The token never reached the page's own address; a reload of the tab keeps
    # it (session storage) and reopens the topic.
    assert token not in page.url
    await page.reload()
    await wait_for_seqs(page, [1, 2, 3, 4, 5, 6])
    assert await page.locator("#token-panel").is_hidden()
    assert await page.get_by_role("heading", name="audit:ledger").is_visible()
    assert problems == []


async def test_payloads_are_shown_as_text_and_never_run(
    browser: Any, secured: Server, database_url: str
) -> None:
    token = admin_token()
    await publish(secured, "room:xss", XSS, token)
    await publish(secured, "room:xss", {"html": SCRIPT_XSS, "x": XSS}, token)

    page, problems = await open_console(browser, secured)
    await enter_token(page, token)
    await page.get_by_test_id("topic-row").filter(has_text="room:xss").click()
    await wait_for_seqs(page, [1, 2])
    await live(page)
    # And one that arrives live, by the other path into the page.
    await publish(secured, "room:xss", {"live": XSS}, token)
    await wait_for_seqs(page, [1, 2, 3])

    texts = await page.get_by_test_id("event-row").all_inner_texts()
    assert json.dumps(XSS) in texts[0]
    assert SCRIPT_XSS in texts[1]
    assert XSS in texts[1]
    assert XSS in texts[2]
    assert await page.locator("#events img, #events script").count() == 0
    assert await page.evaluate("document.images.length") == 0
    assert await page.evaluate("window.pwned === undefined")
    assert problems == []


async def test_readable_on_a_phone(browser: Any, secured: Server) -> None:
    token = admin_token()
    long_topic = "orders/eu/" + "warehouse-" * 8 + "north"
    await publish(secured, long_topic, {"sku": "A" * 120, "note": "a long line " * 12}, token)
    await publish(secured, "room:lobby", {"text": "hi"}, token)

    page, problems = await open_console(browser, secured, width=375)
    await enter_token(page, token)
    await page.get_by_test_id("topic-row").filter(has_text=long_topic).click()
    await wait_for_seqs(page, [1])
    await live(page)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways: {width} px wide"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "console-phone.png", full_page=True)
    assert (ARTIFACTS / "console-phone.png").stat().st_size > 5000
    assert problems == []
