"""Sender actions wait out a platform's reported rate limit, and report one themselves."""

from __future__ import annotations

from typing import Any

from chat.v1 import common_pb2 as c
from server.channels.base import HOLD_CHANNEL, READ, TYPING, Action, ChannelResponse
from server.channels.factory import ChannelFactory
from server.domain.tenant import Tenant
from server.services.delivery_guards import RateHolds
from server.services.platform_actions import PlatformActions


class FakeMessenger:
    channel_type = c.CHANNEL_TYPE_MESSENGER

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.answer = ChannelResponse(success=True)

    def validate_config(self, _tenant: Tenant) -> str:
        return ""

    def validate_recipient(self, _recipient_id: str) -> str:
        return ""

    def format_message(self, _outbound: Any) -> list[dict[str, Any]]:
        return []

    async def send_message(self, _outbound: Any) -> ChannelResponse:
        return ChannelResponse(success=True)

    async def send_action(self, action: Action) -> ChannelResponse | None:
        self.actions.append(action)
        return self.answer


def conversation(recipient: str) -> c.Conversation:
    return c.Conversation(
        id=f"conv-{recipient}", channel=c.CHANNEL_TYPE_MESSENGER, channel_conversation_id=recipient
    )


def test_rate_holds_cover_a_channel_or_one_recipient() -> None:
    now = [100.0]
    holds = RateHolds(clock=lambda: now[0])
    holds.hold("t", c.CHANNEL_TYPE_WHATSAPP, "1555", 5)
    assert holds.seconds("t", c.CHANNEL_TYPE_WHATSAPP, "1555") == 5
    assert holds.seconds("t", c.CHANNEL_TYPE_WHATSAPP, "1666") == 0
    holds.hold("t", c.CHANNEL_TYPE_WHATSAPP, "", 10)
    assert holds.seconds("t", c.CHANNEL_TYPE_WHATSAPP, "1666") == 10
    assert holds.seconds("u", c.CHANNEL_TYPE_WHATSAPP, "1666") == 0  # another tenant
    now[0] = 111
    assert holds.seconds("t", c.CHANNEL_TYPE_WHATSAPP, "1555") == 0


async def test_actions_are_skipped_while_held_and_a_limited_one_holds_the_rest() -> None:
    fake = FakeMessenger()
    factory = ChannelFactory()
    factory.register(fake)  # type: ignore[arg-type]
    holds = RateHolds()
    actions = PlatformActions(
        channels=factory,
        tenants={"t": Tenant(id="t")},
        messages=None,  # type: ignore[arg-type] - READ names its message
        holds=holds,
    )
    actions.schedule("t", conversation("111111"), READ, "mid.1")
    await actions.wait()
    assert [a.kind for a in fake.actions] == [READ]
    fake.answer = ChannelResponse.failed(
        "613", "slow down", retryable=True, retry_after=30, hold=HOLD_CHANNEL
    )
    actions.schedule("t", conversation("111111"), TYPING, "mid.1")
    await actions.wait()
    assert holds.seconds("t", c.CHANNEL_TYPE_MESSENGER, "222222") > 25  # the page is held
    actions.schedule("t", conversation("222222"), READ, "mid.2")
    await actions.wait()
    assert len(fake.actions) == 2  # nothing more went out while held
