"""The web widget in real headless Chromium, against the bridge's demo page: chat with the
built-in responder, quick replies, a reload, a bridge restart mid-reply, an upload."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from devstack.processes import free_port
from devstack.stack import Endpoints
from tests.support.browser import CHROMIUM_FLAGS, OUTPUT, BridgeProcess, chromium
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.servers import RunningServer, tenants_file
from tests.support.web import SERVER_TENANTS, WEB_TENANTS

StartServer = Callable[..., Awaitable[RunningServer]]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def bridge(
    start_server: StartServer, stack: Endpoints, tmp_path: Path
) -> AsyncIterator[BridgeProcess]:
    chromium()  # skip (or fail, in CI) first when there is no browser
    (tmp_path / "server").mkdir()
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path / "server", SERVER_TENANTS), **JWT_SETTINGS
    )
    process = BridgeProcess(
        env={
            **stack.as_env(),
            **JWT_SETTINGS,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_SERVER_TARGET": server.target,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_TENANTS_FILE": tenants_file(tmp_path, WEB_TENANTS),
            "CHAT_WEB_DEMO_TENANT": "acme",
            "CHAT_LOG_FORMAT": "json",
        },
        port=free_port(0),
        log=tmp_path / "bridge.log",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def page(bridge: BridgeProcess) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright  # noqa: PLC0415 - installed or skipped

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), args=list(CHROMIUM_FLAGS)
        )
        context = await browser.new_context(viewport={"width": 900, "height": 700})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{bridge.url}/web/v1/demo/acme")
        await online(page)
        yield page
        await browser.close()
        assert not errors, errors


async def online(page: Any) -> None:
    await page.wait_for_selector(
        "[data-chat-widget][data-state=online]", state="attached", timeout=20_000
    )


async def say(page: Any, text: str) -> None:
    await page.fill("textarea[aria-label=Message]", text)
    await page.press("textarea[aria-label=Message]", "Enter")


async def bot_says(page: Any, text: str) -> None:
    await page.locator(".msg.out .bubble", has_text=text).first.wait_for(timeout=20_000)


async def conversation(page: Any) -> list[str]:
    """Every message shown, in order, as 'in: text' or 'out: text'."""
    rows: list[str] = await page.eval_on_selector_all(
        ".msg",
        "els => els.map(e => (e.classList.contains('in') ? 'in: ' : 'out: ') +"
        " e.querySelector('.bubble').textContent.trim())",
    )
    return rows


def png() -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (120, 80), (245, 166, 35))
    for x in range(0, 120, 20):
        image.paste((214, 40, 40), (x, 0, x + 10, 80))
    image.save(out, format="PNG")
    return out.getvalue()


async def test_chat_quick_replies_reload_restart_and_upload(
    page: Any, bridge: BridgeProcess
) -> None:
    await say(page, "hello")
    await bot_says(page, "Hello! How can I help you today?")
    await say(page, "help")
    await bot_says(page, "What can I help you with?")
    choices = page.locator("button.choice")
    assert await choices.all_text_contents() == ["My orders", "Billing", "Talk to a person"]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "web-widget-quick-replies.png"))
    await page.locator("button.choice", has_text="Billing").click()
    await bot_says(page, "You chose Billing.")
    assert await choices.count() == 0  # quick replies go once one is chosen
    before = await conversation(page)
    assert before == [
        "in: hello",
        "out: Hello! How can I help you today?",
        "in: help",
        "out: What can I help you with?",
        "in: Billing",
        "out: You chose Billing.",
    ]
    await page.wait_for_selector(".msg.in .tick.read")

    # A reload resumes the same conversation.
    await page.reload()
    await online(page)
    await bot_says(page, "You chose Billing.")
    assert await conversation(page) == before

    # The bridge restarts while the bot is replying: every message exactly once afterwards.
    await say(page, "thanks")
    bridge.stop()
    await page.wait_for_selector(
        "[data-chat-widget][data-state=offline]", state="attached", timeout=20_000
    )
    await say(page, "hello again")  # written while the gateway is down: pending
    await page.wait_for_selector(".msg.in .tick.pending")
    bridge.start()
    await online(page)
    await bot_says(page, "Hello again!")
    await bot_says(page, "You're welcome!")
    after = await conversation(page)
    assert after == [
        *before,
        "in: thanks",
        "out: You're welcome!",
        "in: hello again",
        "out: Hello again!",
    ], after
    # And the server stored each once.
    stored = await page.evaluate("localStorage.getItem('chat-web:acme')")
    token = json.loads(stored)["token"]
    assert await stored_texts(bridge, token) == [r.split(": ", 1)[1] for r in after]

    # An image upload shows its thumbnail.
    await page.set_input_files(
        "input[type=file]",
        files=[{"name": "blue.png", "mimeType": "image/png", "buffer": png()}],
    )
    thumbnail = page.locator("img.thumbnail")
    await thumbnail.wait_for(timeout=20_000)
    assert await thumbnail.evaluate("img => img.complete && img.naturalWidth") == 120
    await bot_says(page, "Thanks for your message")
    # Stored (its pending mark gone), and answered: read.
    await page.wait_for_selector(".msg.in:has(img.thumbnail) .tick.read")
    shot = OUTPUT / "web-widget.png"
    await page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")  # noqa: T201 - for a person to look at

    await shows_the_upload_after_a_reload(page)


async def shows_the_upload_after_a_reload(page: Any) -> None:
    """After a reload the upload's preview is gone: the widget fetches the stored image with
    the visitor's token and shows it as a thumbnail again (an object URL, not a file name)."""
    await page.reload()
    await online(page)
    await bot_says(page, "Thanks for your message")
    thumbnail = page.locator(".msg.in img.thumbnail")
    await thumbnail.wait_for(timeout=20_000)
    await page.wait_for_function(
        "() => { const w = document.querySelector('[data-chat-widget]').shadowRoot"
        ".querySelector('.msg.in img.thumbnail'); return w && w.complete && w.naturalWidth > 0 }",
        timeout=20_000,
    )
    assert await thumbnail.evaluate("img => img.naturalWidth") == 120
    assert await thumbnail.evaluate("img => img.src.startsWith('blob:')")
    assert await page.locator(".msg.in .media span", has_text="File:").count() == 0
    shot = OUTPUT / "web-widget-reloaded.png"
    await page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")  # noqa: T201 - for a person to look at


async def stored_texts(bridge: BridgeProcess, token: str) -> list[str]:
    """The conversation as the server stored it (text and chosen titles)."""
    import grpc  # noqa: PLC0415

    from chat.v1 import chat_service_pb2 as chat  # noqa: PLC0415
    from chat.v1 import chat_service_pb2_grpc  # noqa: PLC0415

    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(bridge.env["CHAT_SERVER_TARGET"]) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        listed = await stub.ListConversations(
            chat.ListConversationsRequest(), metadata=metadata, timeout=5
        )
        reply = await stub.ListMessages(
            chat.ListMessagesRequest(conversation_id=listed.conversations[0].id),
            metadata=metadata,
            timeout=5,
        )
    texts = []
    for message in reply.messages:
        content = message.content
        if content.HasField("interactive"):
            texts.append(content.interactive.body)
        elif content.HasField("interactive_reply"):
            texts.append(content.interactive_reply.title)
        else:
            texts.append(content.text.text)
    return texts
