"""How the platforms' failures are met, against the stand-ins: each platform's answers
classified (transient, permanent, rate limits and what they hold), a send that times out
retried, the circuit breaker keeping sends off a platform that is down, and pacing keeping
within a destination's limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from chat.v1 import common_pb2 as c
from chat.v1 import delivery_service_pb2 as delivery
from chat.v1 import delivery_service_pb2_grpc
from devstack.tokens import mint_dev_token
from server.channels.base import HOLD_CHANNEL, HOLD_DESTINATION, Channel, Outbound
from server.channels.messenger import MessengerChannel
from server.channels.slack import SlackChannel
from server.channels.teams import TeamsChannel
from server.channels.whatsapp import WhatsAppChannel
from server.repositories.tenants_file import load_tenants
from tests.support.bridge import TENANTS, sample, unique
from tests.support.chat_client import SECRET
from tests.support.servers import tenants_file
from tests.support.stand_ins import (
    DeliveryStack,
    Mongo,
    Platforms,
    sent,
    status_of,
    whatsapp_reply,
)
from tests.support.waiting import eventually

Answer = tuple[int, dict[str, Any], dict[str, str]]

#: (platform, its answer, the error code recorded, retried?, Retry-After, what it holds)
CASES: list[tuple[str, Answer, str, bool, float | None, str]] = [
    ("whatsapp", (503, {}, {}), "HTTP_503", True, None, ""),
    ("whatsapp", (400, {"error": {"code": 131026}}, {}), "131026", False, None, ""),
    ("whatsapp", (400, {"error": {"code": 131047}}, {}), "131047", False, None, ""),
    ("whatsapp", (400, {"error": {"code": 131056}}, {}), "131056", True, None, HOLD_DESTINATION),
    ("slack", (200, {"ok": False, "error": "channel_not_found"}, {}), "channel_not_found", False,
     None, ""),
    ("slack", (200, {"ok": False, "error": "ratelimited"}, {}), "ratelimited", True, None,
     HOLD_DESTINATION),
    ("slack", (429, {"ok": False}, {"Retry-After": "3"}), "RATE_LIMITED", True, 3.0,
     HOLD_DESTINATION),
    ("slack", (500, {}, {}), "HTTP_500", True, None, ""),
    ("messenger", (400, {"error": {"code": 100, "error_subcode": 2018001}}, {}), "100", False,
     None, ""),
    ("messenger", (400, {"error": {"code": 613}}, {}), "613", True, None, HOLD_CHANNEL),
    ("messenger", (400, {"error": {"code": 4}}, {}), "4", True, None, HOLD_CHANNEL),
    ("messenger", (502, {}, {}), "HTTP_502", True, None, ""),
    ("teams", (412, {"error": {"code": "PreconditionFailed"}}, {}), "412", True, None, ""),
    ("teams", (502, {}, {}), "HTTP_502", True, None, ""),
    ("teams", (504, {}, {}), "HTTP_504", True, None, ""),
    ("teams", (429, {}, {"Retry-After": "2"}), "RATE_LIMITED", True, 2.0, HOLD_DESTINATION),
    ("teams", (403, {"error": {"code": "BotBlocked"}}, {}), "403", False, None, ""),
    ("teams", (404, {"error": {"code": "ConversationNotFound"}}, {}), "404", False, None, ""),
    ("teams", (413, {"error": {"code": "MessageSizeTooBig"}}, {}), "413", False, None, ""),
]  # fmt: skip


def adapter(platform: str, base: str, http: aiohttp.ClientSession) -> Channel:
    channels: dict[str, Channel] = {
        "whatsapp": WhatsAppChannel(http=http, base_url=base, version="v23.0"),
        "slack": SlackChannel(http=http, base_url=base),
        "messenger": MessengerChannel(http=http, base_url=base, version="v23.0"),
        "teams": TeamsChannel(http=http, token_url=f"{base}/token"),
    }
    return channels[platform]


RECIPIENTS = {
    "whatsapp": lambda: "1650" + str(uuid.uuid4().int)[:7],
    "slack": lambda: "C" + uuid.uuid4().hex[:9].upper(),
    "messenger": lambda: str(uuid.uuid4().int)[:16],
    "teams": lambda: "a:" + uuid.uuid4().hex,
}


@pytest.mark.parametrize(
    ("platform", "answer", "code", "retryable", "retry_after", "hold"),
    CASES,
    ids=[f"{case[0]}-{case[2]}" for case in CASES],
)
async def test_each_platforms_answers_are_classified(
    platforms: Platforms,
    tmp_path: Path,
    platform: str,
    answer: Answer,
    code: str,
    retryable: bool,
    retry_after: float | None,
    hold: str,
) -> None:
    """The stand-in answers the send as the platform would; the adapter says whether a later
    attempt may succeed, how long to wait and what else the limit holds."""
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    recipient = RECIPIENTS[platform]()
    platforms.script[recipient] = [answer]
    message = c.Message(id="m-1", content=c.Content(text=c.TextContent(text="hi")))
    async with aiohttp.ClientSession() as http:
        response = await adapter(platform, platforms.base, http).send_message(
            Outbound(
                tenant=tenant, message=message, recipient_id=recipient, service_url=platforms.base
            )
        )
    assert not response.success
    assert response.error is not None
    assert (response.error.code, response.error.retryable) == (code, retryable)
    assert response.error.http_status == answer[0]
    assert response.retry_after == retry_after
    assert response.hold == hold
    [(_, headers, _)] = platforms.requests_to(platform + " ", recipient)
    assert headers["Authorization"].startswith("Bearer ")


async def test_a_send_that_times_out_is_retried(
    delivery_stack: DeliveryStack, platforms: Platforms, delivery_mongo: Mongo
) -> None:
    """The platform takes longer than the send deadline: the attempt is recorded as TIMEOUT
    and the message goes again."""
    async with delivery_stack(CHAT_DELIVERY_SEND_TIMEOUT_MS="2000") as (_, bridge):
        user = "1650" + str(uuid.uuid4().int)[:7]
        platforms.stall.add(user)  # the first send gets no answer in time
        reply = await whatsapp_reply(bridge, delivery_mongo, user)

        await sent(delivery_mongo, reply.id, what="the send after the timeout")
        assert len(platforms.to("whatsapp", user)) == 2
        record = await delivery_mongo["deliveries"].find_one({"_id": reply.id})
        assert record is not None
        [first, second] = record["attempts"]
        assert (first["success"], first["error"]["code"]) == (False, "TIMEOUT")
        assert second["success"]


async def test_the_breaker_keeps_sends_off_a_platform_that_is_down(
    delivery_stack: DeliveryStack, platforms: Platforms, delivery_mongo: Mongo
) -> None:
    """Two failures in a row open the tenant's WhatsApp breaker: for its open window no send
    goes to WhatsApp, for that message or another user's; then one probe goes, succeeds and
    closes it, and the rest follow."""
    async with delivery_stack(
        CHAT_DELIVERY_MAX_ATTEMPTS="6",
        CHAT_DELIVERY_BREAKER_THRESHOLD="2",
        CHAT_DELIVERY_BREAKER_OPEN_MS="2000",
    ) as (_, bridge):
        first, second = ("1650" + str(uuid.uuid4().int)[:7] for _ in range(2))
        platforms.script[first] = [(503, {}, {}), (503, {}, {})]
        reply = await whatsapp_reply(bridge, delivery_mongo, first)

        async def opened() -> bool:
            return len(platforms.to("whatsapp", first)) >= 2

        await eventually(opened, "two failed sends")
        opened_at = platforms.times_to("whatsapp", first)[1]
        other = await whatsapp_reply(bridge, delivery_mongo, second)

        await sent(delivery_mongo, reply.id, other.id, what="both replies once the breaker closed")
        [_, _, probe] = platforms.times_to("whatsapp", first)
        [other_sent] = platforms.times_to("whatsapp", second)
        # The backoff alone (50 ms base) would have sent both within a fraction of a second.
        assert probe - opened_at >= 1.9
        assert other_sent - opened_at >= 1.9


@pytest.mark.redis
async def test_pacing_keeps_a_slack_channel_to_one_message_a_second(
    stack_up: Any, platforms: Platforms
) -> None:
    """Six users write in one Slack channel at once: six conversations, answered in parallel,
    all into that channel. After a burst of three, one a second (GCRA: n sends span at least
    n - 3 seconds), so the service does not cause Slack's 429s."""
    _, bridge = stack_up
    channel = "C" + uuid.uuid4().hex[:9].upper()
    for n in range(6):
        event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
        user = "U" + uuid.uuid4().hex[:8].upper()
        event["event"].update(ts=f"{time.time() + n / 1000:.6f}", user=user, channel=channel)
        status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(event).encode())
        assert status == 200

    async def all_sent() -> bool:
        return len(platforms.to("slack", channel)) == 6

    await eventually(all_sent, "six replies", within=30)
    times = platforms.times_to("slack", channel)
    assert times[-1] - times[0] >= 3 * 0.95


async def test_teams_sends_share_one_cached_token(platforms: Platforms, tmp_path: Path) -> None:
    """Five sends at once with no token yet make one client-credentials request; a later send
    reuses it."""
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    conversations = ["a:" + uuid.uuid4().hex for _ in range(6)]
    message = c.Message(id="m-1", content=c.Content(text=c.TextContent(text="hi")))
    async with aiohttp.ClientSession() as http:
        teams = adapter("teams", platforms.base, http)

        async def send(conversation: str) -> bool:
            response = await teams.send_message(
                Outbound(
                    tenant=tenant,
                    message=message,
                    recipient_id=conversation,
                    service_url=platforms.base,
                )
            )
            return response.success

        assert all(await asyncio.gather(*(send(conv) for conv in conversations[:5])))
        assert await send(conversations[5])
    assert len(platforms.sent("teams-token")) == 1
    for conversation in conversations:
        [(_, headers, _)] = platforms.requests_to("teams ", conversation)
        assert headers["Authorization"] == "Bearer teams-app-token"


async def test_check_channel_asks_each_platform_with_the_tenants_credentials(
    stack_up: Any, platforms: Platforms
) -> None:
    server, _ = stack_up
    admin = mint_dev_token(secret=SECRET, tenant_id="acme", scopes=("chat:admin",))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        metadata = (("authorization", f"Bearer {admin}"),)

        async def check(kind: int) -> delivery.CheckChannelResponse:
            response: delivery.CheckChannelResponse = await stub.CheckChannel(
                delivery.CheckChannelRequest(channel=kind), metadata=metadata
            )
            return response

        for kind in PLATFORM_CHANNELS:
            answer = await check(kind)
            assert answer.healthy, kind
            assert answer.check_time.seconds > 0
        paths = {(path, headers.get("Authorization")) for path, headers, _ in platforms.requests}
        assert ("graph-health /v23.0/106540352242922", "Bearer t") in paths  # the number
        assert ("graph-health /v23.0/me", "Bearer t") in paths  # the page
        assert ("slack-health /api/auth.test", "Bearer xoxb-t") in paths
        assert platforms.sent("teams-token")  # the bot's credentials

        # Refused credentials: not healthy, with the platform's error, not to be retried.
        platforms.script["health"] = [
            (401, {"error": {"code": 190, "message": "Invalid OAuth access token"}}, {})
        ]
        refused = await check(c.CHANNEL_TYPE_WHATSAPP)
        assert not refused.healthy
        assert (refused.error.code, refused.error.retryable) == ("190", False)
        platforms.script["health"] = [(503, {}, {})]
        down = await check(c.CHANNEL_TYPE_MESSENGER)
        assert (down.healthy, down.error.code, down.error.retryable) == (False, "HTTP_503", True)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(c.CHANNEL_TYPE_WEB)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # globex has no channels configured.
        other = mint_dev_token(secret=SECRET, tenant_id="globex", scopes=("chat:admin",))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckChannel(
                delivery.CheckChannelRequest(channel=c.CHANNEL_TYPE_SLACK),
                metadata=(("authorization", f"Bearer {other}"),),
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        reader = mint_dev_token(secret=SECRET, tenant_id="acme", scopes=("chat:read",))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckChannel(
                delivery.CheckChannelRequest(channel=c.CHANNEL_TYPE_SLACK),
                metadata=(("authorization", f"Bearer {reader}"),),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


PLATFORM_CHANNELS = (
    c.CHANNEL_TYPE_WHATSAPP,
    c.CHANNEL_TYPE_MESSENGER,
    c.CHANNEL_TYPE_SLACK,
    c.CHANNEL_TYPE_TEAMS,
)


async def test_a_later_message_waits_for_an_earlier_ones_retry_without_spinning(
    delivery_stack: DeliveryStack, platforms: Platforms, delivery_mongo: Mongo
) -> None:
    """The first reply fails and waits seconds for its retry; the second reply of the same
    conversation is held until the first is due (order kept), not claimed again and again."""
    async with delivery_stack(
        CHAT_DELIVERY_BASE_DELAY_MS="8000",  # the first retry comes 4 to 8 s later
    ) as (_, bridge):
        user = "1650" + str(uuid.uuid4().int)[:7]
        platforms.script[user] = [(503, {}, {})]
        first = await whatsapp_reply(bridge, delivery_mongo, user, "first")
        deliveries = delivery_mongo["deliveries"]

        async def failed_once() -> bool:
            found = await deliveries.find_one({"_id": first.id})
            return found is not None and len(found["attempts"]) == 1

        await eventually(failed_once, "the first attempt")
        second = await whatsapp_reply(bridge, delivery_mongo, user, "second")
        first_due = (await deliveries.find_one({"_id": first.id}) or {})["due_time"]

        async def held() -> bool:
            found = await deliveries.find_one({"_id": second.id})
            return (
                found is not None
                and found.get("due_time") is not None
                and (found["due_time"] >= first_due - dt.timedelta(milliseconds=50))
            )

        # Within three seconds: claims every 200 ms would reach the first's due time (four to
        # eight seconds away) only later.
        await eventually(held, "the second reply held until the first is due", within=3.0)
        assert len(platforms.to("whatsapp", user)) == 1  # only the first's failed attempt

        async def both_sent() -> bool:
            return len(platforms.to("whatsapp", user)) == 3

        await eventually(both_sent, "both replies, in order", within=30)

        await sent(delivery_mongo, second.id, what="the second reply's outcome")
        first_record = await deliveries.find_one({"_id": first.id})
        second_record = await deliveries.find_one({"_id": second.id})
        assert first_record is not None
        assert second_record is not None
        [second_attempt] = second_record["attempts"]  # held, never tried before its turn
        assert first_record["attempts"][-1]["success"]
        assert first_record["attempts"][-1]["time"] <= second_attempt["time"]


async def test_a_graceful_restart_mid_send_finishes_the_send_and_sends_it_once(
    delivery_stack: DeliveryStack, platforms: Platforms, delivery_mongo: Mongo
) -> None:
    """SIGTERM's path (ChatServer.stop) while the platform holds a send: the send in hand is
    finished and its outcome recorded before the process ends, so the server that starts
    next on the database has nothing to send again."""
    user = "1650" + str(uuid.uuid4().int)[:7]
    async with delivery_stack() as (server, bridge):
        platforms.stall.add(user)
        reply = await whatsapp_reply(bridge, delivery_mongo, user)

        async def at_the_platform() -> bool:
            return bool(platforms.to("whatsapp", user))

        await eventually(at_the_platform, "the send")
        stopping = asyncio.create_task(server.server.stop())
        await asyncio.sleep(0.5)
        assert not stopping.done()  # it waits for the send in hand
        platforms.release.set()
        await asyncio.wait_for(stopping, 30)
        assert await status_of(delivery_mongo, reply.id) == c.DELIVERY_STATUS_SENT

    async with delivery_stack() as (_, bridge):
        # Once the new server has delivered a new reply, its delivery loop has run.
        newcomer = "1650" + str(uuid.uuid4().int)[:7]
        other = await whatsapp_reply(bridge, delivery_mongo, newcomer)

        await sent(delivery_mongo, other.id, what="a reply from the new server")
        assert len(platforms.to("whatsapp", user)) == 1
        record = await delivery_mongo["deliveries"].find_one({"_id": reply.id})
        assert record is not None
        assert (record["state"], len(record["attempts"])) == ("sent", 1)


async def test_a_refused_teams_token_is_asked_for_once_by_the_sends_waiting(
    platforms: Platforms, tmp_path: Path
) -> None:
    """The token endpoint refuses the app's credentials: the sends that were waiting for a
    token get that answer, instead of each asking again in turn."""
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    platforms.script["token"] = [(401, {"error": "invalid_client"}, {})]
    message = c.Message(id="m-1", content=c.Content(text=c.TextContent(text="hi")))
    async with aiohttp.ClientSession() as http:
        teams = adapter("teams", platforms.base, http)
        responses = await asyncio.gather(
            *(
                teams.send_message(
                    Outbound(
                        tenant=tenant,
                        message=message,
                        recipient_id="a:" + uuid.uuid4().hex,
                        service_url=platforms.base,
                    )
                )
                for _ in range(4)
            )
        )
    assert [(r.success, r.error.code if r.error else "") for r in responses] == [
        (False, "TOKEN")
    ] * 4
    assert len(platforms.sent("teams-token")) == 1
    assert not platforms.sent("teams ")  # nothing posted without a token
