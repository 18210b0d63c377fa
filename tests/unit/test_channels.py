"""Per-platform formatting, splitting, interactive mapping, and the delivery breaker."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from chat.v1 import common_pb2 as c
from server.channels.base import ChannelResponse, Outbound, send_parts
from server.channels.formatting import (
    SLACK_ATOMS,
    split_text,
    to_plain,
    to_slack,
    to_whatsapp,
)
from server.channels.messenger import MessengerChannel
from server.channels.slack import SlackChannel
from server.channels.teams import MAX_INLINE_IMAGE_BYTES, TeamsChannel
from server.channels.whatsapp import WhatsAppChannel
from server.domain.tenant import Tenant
from server.services.delivery_guards import CircuitBreaker, DeliveryPolicy

MARKDOWN = "**Hours** are *9-5*, ~~weekends~~ see [our site](https://example.com) & <more>"


def test_markdown_per_platform() -> None:
    assert to_whatsapp(MARKDOWN) == (
        "*Hours* are _9-5_, ~weekends~ see our site (https://example.com) & <more>"
    )
    assert to_slack(MARKDOWN) == (
        "*Hours* are _9-5_, ~weekends~ see <https://example.com|our site> &amp; &lt;more&gt;"
    )
    assert (
        to_plain(MARKDOWN) == "Hours are 9-5, weekends see our site (https://example.com) & <more>"
    )


def test_splitting_at_word_boundaries() -> None:
    text = " ".join(f"word{n}" for n in range(1000))
    pieces = split_text(text, 100)
    assert all(len(piece) <= 100 for piece in pieces)
    assert " ".join(pieces) == text  # nothing lost, no word cut
    assert split_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]  # one long word
    assert split_text("first paragraph\n\nsecond", 20) == ["first paragraph", "second"]


def test_slack_pieces_never_end_inside_a_link_or_an_entity() -> None:
    link = "<https://example.com/a|the link text with spaces>"
    text = to_slack("word " * 12 + "[the link text with spaces](https://example.com/a) tail")
    assert link in text
    pieces = split_text(text, 90, SLACK_ATOMS)
    assert all(len(piece) <= 90 for piece in pieces)
    assert any(link in piece for piece in pieces)  # whole, in one piece
    assert " ".join(pieces).split() == text.split()
    # Without the rule, the cut would fall between the link's words.
    assert not any(link in piece for piece in split_text(text, 90))
    # A hard cut (no space) moves before an entity rather than through it.
    dense = "x" * 58 + "&amp;" + "y" * 40
    first, *_ = split_text(dense, 60, SLACK_ATOMS)
    assert first == "x" * 58


def outbound(content: c.Content, recipient: str = "15550001111") -> Outbound:
    return Outbound(
        tenant=Tenant(id="t"), message=c.Message(content=content), recipient_id=recipient
    )


def choices(count: int) -> c.Content:
    buttons = [
        c.Button(id=f"b{n}", title=f"Option number {n} with a long title") for n in range(count)
    ]
    return c.Content(
        interactive=c.InteractiveContent(
            body="**Pick** one", buttons=c.ButtonGroup(buttons=buttons)
        )
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()  # formatting makes no requests
    yield session
    await session.close()


async def test_whatsapp_forms(http: aiohttp.ClientSession) -> None:
    channel = WhatsAppChannel(http=http, base_url="http://x", version="v23.0")
    [buttons] = channel.format_message(outbound(choices(3)))
    action = buttons["interactive"]["action"]["buttons"]
    assert buttons["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in action] == ["b0", "b1", "b2"]
    assert all(len(b["reply"]["title"]) <= 20 for b in action)
    assert buttons["interactive"]["body"]["text"] == "*Pick* one"
    [listed] = channel.format_message(outbound(choices(7)))
    assert listed["interactive"]["type"] == "list"  # more than 3 choices
    assert len(listed["interactive"]["action"]["sections"][0]["rows"]) == 7
    [numbered] = channel.format_message(outbound(choices(12)))  # more than a list holds
    assert numbered["type"] == "text"
    assert "12. Option number 11" in numbered["text"]["body"]
    card = c.Content(
        interactive=c.InteractiveContent(
            body="Our offer",
            card=c.Card(title="Plan", buttons=[c.Button(title="Buy", url="https://x.test/buy")]),
        )
    )
    [as_text] = channel.format_message(outbound(card))
    assert as_text["text"]["body"] == "Our offer\nPlan\n  Buy: https://x.test/buy"
    assert channel.format_message(outbound(c.Content())) == []  # send_message refuses it
    long = channel.format_message(outbound(c.Content(text=c.TextContent(text="word " * 2000))))
    assert len(long) == 3
    assert all(len(part["text"]["body"]) <= 4096 for part in long)
    [place] = channel.format_message(
        outbound(c.Content(location=c.LocationContent(latitude=52.5, longitude=13.4, name="HQ")))
    )
    assert place["location"] == {"latitude": 52.5, "longitude": 13.4, "name": "HQ"}
    assert channel.validate_recipient("+4915112345678") == ""
    assert channel.validate_recipient("C111") != ""


async def test_slack_messenger_and_teams_forms(http: aiohttp.ClientSession) -> None:
    slack = SlackChannel(http=http, base_url="http://x")
    [blocks] = slack.format_message(outbound(choices(3), "C0123"))
    assert blocks["blocks"][1]["type"] == "actions"
    assert [e["value"] for e in blocks["blocks"][1]["elements"]] == ["b0", "b1", "b2"]
    [located] = slack.format_message(
        outbound(c.Content(location=c.LocationContent(latitude=1.5, longitude=2.5)), "C0123")
    )
    assert "https://maps.google.com/?q=1.5,2.5" in located["text"]

    messenger = MessengerChannel(http=http, base_url="http://x", version="v23.0")
    [template] = messenger.format_message(outbound(choices(3), "1234567890"))
    assert template["message"]["attachment"]["payload"]["template_type"] == "button"
    [quick] = messenger.format_message(outbound(choices(8), "1234567890"))
    assert len(quick["message"]["quick_replies"]) == 8
    [numbered] = messenger.format_message(outbound(choices(20), "1234567890"))
    assert "quick_replies" not in numbered["message"]  # the documented fallback
    assert "20. Option number 19" in numbered["message"]["text"]
    parts = messenger.format_message(outbound(c.Content(text=c.TextContent(text="w " * 3000))))
    assert all(len(p["message"]["text"]) <= 2000 for p in parts)
    assert messenger.validate_recipient("<PSID>") != ""

    teams = TeamsChannel(http=http, token_url="http://x/token")
    [card] = teams.format_message(outbound(choices(2), "a:1"))
    content = card["attachments"][0]
    assert content["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [a["data"]["id"] for a in content["content"]["actions"]] == ["b0", "b1"]


async def test_limits_beyond_what_slack_and_teams_take(http: aiohttp.ClientSession) -> None:
    slack = SlackChannel(http=http, base_url="http://x")
    [blocks] = slack.format_message(outbound(choices(25), "C0123"))
    assert len(blocks["blocks"][1]["elements"]) == 25  # an actions block holds 25
    # Beyond that, the documented fallback: every choice in a numbered list, none dropped.
    [numbered] = slack.format_message(outbound(choices(30), "C0123"))
    assert "blocks" not in numbered
    assert numbered["text"].startswith("*Pick* one\n1. Option number 0")
    assert "30. Option number 29" in numbered["text"]
    for good in ("C0123ABC", "U024BE7LH", "D024BE91L", "G0123ABC", "W0123ABC"):
        assert slack.validate_recipient(good) == "", good
    for bad in ("", "c0123", "#general", "C0123 ", "X0123ABC", "C0"):
        assert slack.validate_recipient(bad) != "", bad

    teams = TeamsChannel(http=http, token_url="http://x/token")
    words = "word " * 1000  # 5,000 characters: Teams refuses a message past about 28 KB
    parts = teams.format_message(outbound(c.Content(text=c.TextContent(text=words)), "a:1"))
    assert len(parts) == 3
    assert all(len(p["text"]) <= 2000 for p in parts)
    assert " ".join(p["text"] for p in parts).split() == words.split()
    for good in (
        "a:17I0kl9EkpE1O9PH5TWrzrLNwnWWcfrU7QZjKR0WSfOpzbfcAg2IaydGElSo10tVr4C7Fc6GtieTJX663WuJ",
        "19:efa9296d959346209fea44151c742e73@thread.skype",
        "19:abc@thread.tacv2;messageid=1481567603816",
        "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB",
    ):
        assert teams.validate_recipient(good) == "", good
    for bad in (
        "",
        "a:",
        "general",
        "19:has space@thread.skype",
        "28:bot-id",
        "a:" + "x" * 1100,
        "a:1\n",
    ):
        assert teams.validate_recipient(bad) != "", bad


async def test_teams_sends_small_images_inline_and_other_media_as_caption_and_name(
    http: aiohttp.ClientSession,
) -> None:
    teams = TeamsChannel(http=http, token_url="http://x/token")

    def media(mime: str, data: bytes | None, caption: str = "the **plan**") -> Outbound:
        content = c.Content(
            media=c.MediaContent(mime_type=mime, file_name="plan.png", caption=caption)
        )
        return replace(outbound(content, "a:1"), media=data)

    small = b"\x89PNG" + bytes(1000)
    [inline] = teams.format_message(media("image/png", small))
    [attachment] = inline["attachments"]
    assert attachment["contentType"] == "image/png"
    assert attachment["contentUrl"] == "data:image/png;base64," + base64.b64encode(small).decode()
    assert attachment["name"] == "plan.png"
    assert (inline["text"], inline["textFormat"]) == ("the **plan**", "markdown")
    [bare] = teams.format_message(media("image/jpeg", small, caption=""))
    assert "text" not in bare
    assert bare["attachments"][0]["contentUrl"].startswith("data:image/jpeg;base64,")
    # Too big for an activity, not an image Teams shows inline, or no bytes: caption and name.
    for fallback in (
        media("image/png", bytes(MAX_INLINE_IMAGE_BYTES + 1)),
        media("video/mp4", small),
        media("image/png", None),
    ):
        [text] = teams.format_message(fallback)
        assert text == {"type": "message", "text": "the **plan** [plan.png]"}


def test_backoff_grows_honours_retry_after_and_is_capped() -> None:
    policy = DeliveryPolicy(base_delay_seconds=1, max_delay_seconds=60)
    assert 0.5 <= policy.delay(1, None) <= 1
    assert 4 <= policy.delay(4, None) <= 8
    assert policy.delay(1, 30) == 30  # never sooner than the platform asked
    assert policy.delay(20, None) <= 60


def test_the_breaker_opens_after_repeated_failures_and_closes_on_success() -> None:
    breaker = CircuitBreaker(threshold=3, open_seconds=30)
    key = ("t", c.CHANNEL_TYPE_SLACK)
    for _ in range(2):
        breaker.failure(key)
    assert breaker.wait_seconds(key) == 0
    breaker.failure(key)
    assert 29 < breaker.wait_seconds(key) <= 30
    assert breaker.wait_seconds(("t", c.CHANNEL_TYPE_TEAMS)) == 0  # per tenant and channel
    breaker.success(key)
    assert breaker.wait_seconds(key) == 0


def test_after_its_window_the_breaker_lets_exactly_one_probe_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, open_seconds=30, probe_seconds=20, clock=lambda: now[0])
    key = ("t", c.CHANNEL_TYPE_WHATSAPP)
    breaker.failure(key)
    breaker.failure(key)
    assert breaker.wait_seconds(key) == 30
    now[0] = 31
    assert breaker.wait_seconds(key) == 0  # the probe
    assert breaker.wait_seconds(key) > 0  # everyone else waits for its verdict
    assert breaker.wait_seconds(key) > 0
    breaker.failure(key)  # the probe failed: open again, at once
    assert breaker.wait_seconds(key) == 30
    now[0] = 62
    assert breaker.wait_seconds(key) == 0  # the next probe
    breaker.release(key)  # postponed before it reached the platform: no verdict
    assert breaker.wait_seconds(key) == 0  # so another may probe
    now[0] = 90
    assert breaker.wait_seconds(key) == 0  # a probe that never reported frees its slot
    breaker.success(key)
    assert breaker.wait_seconds(key) == 0
    assert breaker.wait_seconds(key) == 0  # closed: everyone goes


async def test_a_split_message_resumes_after_the_parts_already_sent() -> None:
    sent: list[str] = []
    failing = {"b"}

    async def send_one(body: dict[str, str]) -> ChannelResponse:
        if body["part"] in failing:
            return ChannelResponse.failed("HTTP_503", "down", retryable=True)
        sent.append(body["part"])
        return ChannelResponse(success=True, platform_message_id=f"id-{body['part']}")

    bodies = [{"part": "a"}, {"part": "b"}, {"part": "c"}]
    first = await send_parts(bodies, skip=0, send_one=send_one)
    assert (first.success, first.parts_sent, first.platform_message_id) == (False, 1, "id-a")
    failing.clear()
    second = await send_parts(bodies, skip=first.parts_sent, send_one=send_one)
    assert (second.success, second.parts_sent) == (True, 3)
    assert sent == ["a", "b", "c"]  # "a" was not sent twice
    nothing = await send_parts([], skip=0, send_one=send_one)
    assert nothing.error is not None
    assert (nothing.error.code, nothing.error.retryable) == ("UNSUPPORTED_CONTENT", False)


def test_rate_limits_say_what_they_hold() -> None:
    from server.channels import whatsapp  # noqa: PLC0415
    from server.channels.base import (  # noqa: PLC0415
        HOLD_CHANNEL,
        HOLD_DESTINATION,
        HttpAnswer,
        transport_failure,
    )

    def wa(code: int) -> str:
        return whatsapp._error(400, {"error": {"code": code}}).hold

    assert wa(130429) == HOLD_CHANNEL  # the business number's throughput
    assert wa(131056) == HOLD_DESTINATION  # the pair limit: this recipient only
    assert wa(131047) == ""  # not a rate limit
    limited = transport_failure(HttpAnswer(429, {}, 2.0))
    assert limited is not None
    assert (limited.hold, limited.retry_after) == (HOLD_CHANNEL, 2.0)
    assert transport_failure(HttpAnswer(503, {}, None)).hold == ""  # type: ignore[union-attr]


async def test_content_no_platform_can_show_is_named(
    http: aiohttp.ClientSession,
) -> None:
    adapters = [
        WhatsAppChannel(http=http, base_url="http://x", version="v23.0"),
        MessengerChannel(http=http, base_url="http://x", version="v23.0"),
        SlackChannel(http=http, base_url="http://x"),
        TeamsChannel(http=http, token_url="http://x/token"),
    ]
    bad = {
        "the message has no content": c.Content(),
        "the text is empty": c.Content(text=c.TextContent(text="  \n")),
        "interactive_reply cannot be sent to a platform": c.Content(
            interactive_reply=c.InteractiveReply(selected_id="b1", title="Yes")
        ),
    }
    for adapter in adapters:
        for problem, content in bad.items():
            assert adapter.validate_content(c.Message(content=content)) == problem
        for good in (c.Content(text=c.TextContent(text="hi")), choices(2)):
            assert adapter.validate_content(c.Message(content=good)) == ""
