"""The platform sandbox's page in real headless Chromium: chat as a WhatsApp user, see the
bot's reply buttons and the ticks move to read, click a button and get the answer to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.sandbox import Sandbox
from tests.support.browser import CHROMIUM_FLAGS, OUTPUT, chromium
from tests.support.stand_ins import SANDBOX_TENANT, DeliveryStack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def sandbox(delivery_stack: DeliveryStack, platforms: Sandbox) -> AsyncIterator[Sandbox]:
    chromium()  # skip (or fail, in CI) first when there is no browser
    async with delivery_stack() as (_, bridge):
        platforms.state.receipt_delay = 0.05
        platforms.connect(bridge.url, SANDBOX_TENANT)
        yield platforms


@pytest.fixture
async def page(sandbox: Sandbox) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright  # noqa: PLC0415 - installed or skipped

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), args=list(CHROMIUM_FLAGS)
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 760})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{sandbox.base}/")
        await page.wait_for_selector("#connection.ok", timeout=10_000)
        yield page
        await browser.close()
        assert not errors, errors


async def test_chat_as_a_whatsapp_user_and_click_a_reply_button(page: Any) -> None:
    await page.click("[data-platform=whatsapp]")
    await page.click("[data-user=ana]")
    await page.fill("#text", "help")
    await page.click("#send")

    menu = page.locator("li.msg.bot", has_text="What can I help you with?")
    await menu.wait_for(timeout=10_000)
    assert await menu.locator(".form").inner_text() == "REPLY BUTTONS"
    titles = await menu.locator(".choices button").all_inner_texts()
    assert titles == ["My orders", "Billing", "Talk to a person"]
    # The platform's receipts move the ticks: sent, delivered, read.
    await page.wait_for_selector("li.msg.bot[data-status=read]", timeout=10_000)
    # The bot marked the user's message read.
    await page.wait_for_selector("li.msg.user[data-status=read]", timeout=10_000)

    await menu.locator("button", has_text="Billing").click()
    await page.locator("li.msg.bot", has_text="You chose Billing.").wait_for(timeout=10_000)
    # The panel shows the raw requests both ways: the webhooks and the API calls.
    panel = page.locator("#exchanges")
    await panel.locator("summary", has_text="/webhooks/whatsapp/acme").first.wait_for()
    await panel.locator("summary", has_text="/messages").first.wait_for()

    OUTPUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "sandbox-whatsapp.png"))
