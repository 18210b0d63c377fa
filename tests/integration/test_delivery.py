"""Outbound delivery against local stand-ins for each platform's send API: full round trips
from a signed webhook to the bot's reply POSTed to the right place, retries with Retry-After,
permanent failures, the dead-letter state with RetryDelivery, and a lease left by a dead
process."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from chat.v1 import chat_service_pb2 as chat_pb
from chat.v1 import common_pb2 as c
from chat.v1 import delivery_service_pb2 as delivery
from chat.v1 import delivery_service_pb2_grpc
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.channels.base import Outbound
from server.channels.messenger import MessengerChannel
from server.channels.slack import SlackChannel
from server.channels.teams import TeamsChannel
from server.channels.whatsapp import WhatsAppChannel
from server.repositories.deliveries import MongoDeliveries
from server.repositories.mongo import Transactions
from server.repositories.tenants_file import load_tenants
from tests.support.bot_framework import TeamsKeys
from tests.support.bridge import (
    MESSENGER_SECRET,
    TENANTS,
    WHATSAPP_SECRET,
    Bridge,
    sample,
    start_bridge,
    unique,
)
from tests.support.chat_client import JWT_SETTINGS, SECRET, ChatClient
from tests.support.server_process import chat_server_process
from tests.support.servers import RunningServer, tenants_file
from tests.support.stand_ins import (
    Mongo,
    Platforms,
    StartServer,
    reply_of,
    sent,
    status_of,
    whatsapp_text,
)
from tests.support.streams import Stream
from tests.support.waiting import eventually


@pytest.fixture
def mongo(delivery_mongo: Mongo) -> Mongo:
    return delivery_mongo


async def test_whatsapp_round_trip_then_receipts(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    _, bridge = stack_up
    user = "1650555" + str(uuid.uuid4().int)[:4]
    payload, wamid = whatsapp_text(user)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)

    await sent(mongo, reply.id, what="the reply to be sent")
    [(path, headers, body)] = platforms.to("whatsapp", user)
    assert path == "whatsapp /v23.0/106540352242922/messages"  # the tenant's phone number id
    assert headers["Authorization"] == "Bearer t"
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": user,
        "type": "text",
        "text": {"body": "Hello! How can I help you today?", "preview_url": True},
    }
    document = await mongo["messages"].find_one({"_id": reply.id})
    assert document is not None
    out_id = document["platform_message_id"]
    assert out_id.startswith("wamid.out-")

    # The platform's receipts, through the bridge, move the status forward only.
    for status in ("read", "delivered"):
        receipt = sample("whatsapp", "webhook_status_sent.json")
        item = receipt["entry"][0]["changes"][0]["value"]["statuses"][0]
        item.update(id=out_id, status=status, recipient_id=user)
        assert await bridge.meta("whatsapp", receipt, WHATSAPP_SECRET) == 200
    assert await status_of(mongo, reply.id) == c.DELIVERY_STATUS_READ


async def test_slack_messenger_and_teams_round_trips(
    stack_up: tuple[RunningServer, Bridge],
    platforms: Platforms,
    mongo: Mongo,
    teams_keys: TeamsKeys,
) -> None:
    _, bridge = stack_up
    event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
    event["event"]["ts"] = f"{time.time():.6f}"
    event["event"]["user"] = "U" + uuid.uuid4().hex[:8].upper()
    status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(event).encode())
    assert status == 200
    psid = str(uuid.uuid4().int)[:16]
    item, [mid] = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    item["sender"] = {"id": psid}
    item["message"].pop("reply_to")
    payload = {"object": "page", "entry": [{"id": "PAGE", "messaging": [item]}]}
    assert await bridge.meta("messenger", payload, MESSENGER_SECRET) == 200
    activity, [activity_id] = unique(
        sample("teams", "activity_message_text_personal.json"), "1485983408511"
    )
    activity["serviceUrl"] = platforms.base + "/"
    activity["from"]["id"] = "29:" + uuid.uuid4().hex
    status, _ = await bridge.teams(activity, teams_keys.token(serviceurl=platforms.base + "/"))
    assert status == 200

    conversation = activity["conversation"]["id"]
    wanted = {"slack": event["event"]["channel"], "messenger": psid, "teams ": conversation}

    async def all_sent() -> bool:
        return all(platforms.to(api, who) for api, who in wanted.items())

    await eventually(all_sent, "a reply on each platform")
    [(_, slack_headers, slack_body)] = platforms.to("slack", event["event"]["channel"])
    assert slack_headers["Authorization"] == "Bearer xoxb-t"
    assert slack_body["channel"] == "C111"
    assert slack_body["text"] == "Hello! How can I help you today?"
    [(_, fb_headers, fb_body)] = platforms.to("messenger", psid)
    assert fb_headers["Authorization"] == "Bearer t"
    assert fb_body == {
        "recipient": {"id": psid},
        "messaging_type": "RESPONSE",
        "message": {"text": "Hello! How can I help you today?"},
    }
    (token_path, _, token_form) = platforms.sent("teams-token")[-1]
    assert (token_form["grant_type"], token_form["scope"]) == (
        "client_credentials",
        "https://api.botframework.com/.default",
    )
    [(teams_path, teams_headers, teams_body)] = platforms.to("teams ", conversation)
    assert teams_path == f"teams /v3/conversations/{conversation}/activities"
    assert teams_headers["Authorization"] == "Bearer teams-app-token"
    assert teams_body["type"] == "message"
    assert teams_body["text"] == "Hello! How can I help you today?"
    assert token_path == "teams-token /token"

    # Receipts through the bridge: a Messenger read watermark, a Teams read receipt.
    fb_reply = await reply_of(mongo, mid)
    teams_reply = await reply_of(mongo, activity_id)
    # The stand-ins have had the sends; each send's outcome is committed just after.
    await sent(mongo, fb_reply.id, teams_reply.id, what="the Messenger and Teams sends")
    read = {
        "sender": {"id": psid},
        "recipient": {"id": "PAGE"},
        "timestamp": int(time.time() * 1000),
        "read": {"watermark": int(time.time() * 1000) + 1000},
    }
    payload = {"object": "page", "entry": [{"id": "PAGE", "messaging": [read]}]}
    assert await bridge.meta("messenger", payload, MESSENGER_SECRET) == 200
    assert await status_of(mongo, fb_reply.id) == c.DELIVERY_STATUS_READ
    sent_teams = await mongo["messages"].find_one({"_id": teams_reply.id})
    assert sent_teams is not None
    receipt = {
        "type": "event",
        "name": "application/vnd.microsoft.readReceipt",
        "id": uuid.uuid4().hex,
        "channelId": "msteams",
        "serviceUrl": platforms.base + "/",
        "from": activity["from"],
        "conversation": activity["conversation"],
        "recipient": activity["recipient"],
        "value": {"lastReadMessageId": sent_teams["platform_message_id"]},
    }
    status, _ = await bridge.teams(receipt, teams_keys.token(serviceurl=platforms.base + "/"))
    assert status == 200
    assert await status_of(mongo, teams_reply.id) == c.DELIVERY_STATUS_READ

    # An agent writes into the Teams conversation through the API: its message reaches the
    # serviceUrl the bridge's verified activity gave (never one a request names).
    await agent_writes_to_teams(
        stack_up[0], platforms, conversation, activity["from"]["id"], teams_reply.conversation_id
    )


async def agent_writes_to_teams(
    server: RunningServer,
    platforms: Platforms,
    conversation: str,
    user: str,
    conversation_id: str,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        agent = ChatClient(channel, "acme")
        before = len(platforms.to("teams ", conversation))
        await agent.send(
            "an agent here",
            user_id=f"{conversation}/{user}",
            channel=c.CHANNEL_TYPE_TEAMS,
            conversation_id=conversation_id,
            metadata={"service_url": "https://attacker.example/"},
        )

        async def posted() -> bool:
            return len(platforms.to("teams ", conversation)) > before

        # Had the request's service URL been used, nothing would have arrived here.
        await eventually(posted, "the reply to the agent's message, on Teams")


async def test_retry_after_then_success_and_permanent_failures_then_replay(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    server, bridge = stack_up
    user = "1650555" + str(uuid.uuid4().int)[:4]
    platforms.script[user] = [(429, {"error": {"code": 130429}}, {"Retry-After": "1"})]
    payload, wamid = whatsapp_text(user)
    started = time.monotonic()
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)

    await sent(mongo, reply.id, what="the retried send")
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert len(platforms.to("whatsapp", user)) == 2

    admin = mint_dev_token(secret=SECRET, tenant_id="acme", scopes=("chat:read", "chat:admin"))
    metadata = (("authorization", f"Bearer {admin}"),)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        record = (
            await stub.GetDeliveryStatus(
                delivery.GetDeliveryStatusRequest(message_id=reply.id), metadata=metadata
            )
        ).delivery
        assert (record.status, record.attempt_count) == (c.DELIVERY_STATUS_SENT, 2)
        # The platform's own code (it says what the limit covers), with the HTTP status.
        assert record.attempts[0].error.code == "130429"
        assert record.attempts[0].error.http_status == 429
        assert record.attempts[1].success

        # Outside the 24-hour window: permanent, so no retry.
        user = "1650555" + str(uuid.uuid4().int)[:4]
        platforms.script[user] = [
            (400, {"error": {"code": 131047, "message": "Re-engagement message"}}, {})
        ]
        payload, wamid = whatsapp_text(user)
        assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
        failed_reply = await reply_of(mongo, wamid)

        async def failed() -> bool:
            return await status_of(mongo, failed_reply.id) == c.DELIVERY_STATUS_FAILED

        await eventually(failed, "the permanent failure")
        # The dead letters and their replay are an admin's: a read or write token is refused.
        reader = mint_dev_token(secret=SECRET, tenant_id="acme", scopes=("chat:read", "chat:write"))
        for call, request in (
            (stub.ListFailedDeliveries, delivery.ListFailedDeliveriesRequest()),
            (stub.RetryDelivery, delivery.RetryDeliveryRequest(message_id=failed_reply.id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, metadata=(("authorization", f"Bearer {reader}"),))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await stub.ListFailedDeliveries(
            delivery.ListFailedDeliveriesRequest(channel=c.CHANNEL_TYPE_WHATSAPP), metadata=metadata
        )
        mine = [d for d in listed.deliveries if d.message_id == failed_reply.id]
        assert len(mine) == 1
        assert mine[0].attempt_count == 1
        assert mine[0].last_error.code == "131047"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RetryDelivery(
                delivery.RetryDeliveryRequest(message_id=reply.id), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # it was sent
        retried = await stub.RetryDelivery(
            delivery.RetryDeliveryRequest(message_id=failed_reply.id, request_id="r1"),
            metadata=metadata,
        )
        assert retried.delivery.status == c.DELIVERY_STATUS_QUEUED
        # The message status itself never moves back: FAILED stays until a send succeeds.

        async def resent() -> bool:
            found = await stub.GetDeliveryStatus(
                delivery.GetDeliveryStatusRequest(message_id=failed_reply.id), metadata=metadata
            )
            return found.delivery.status == c.DELIVERY_STATUS_SENT

        await eventually(resent, "the replayed delivery")
        # The message itself follows: FAILED is overruled by the send that went through.
        assert await status_of(mongo, failed_reply.id) == c.DELIVERY_STATUS_SENT


async def test_server_errors_exhaust_the_attempts_and_bad_recipients_fail_fast(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    _, bridge = stack_up
    user = "1650555" + str(uuid.uuid4().int)[:4]
    platforms.script[user] = [(503, {}, {})] * 3
    payload, wamid = whatsapp_text(user)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)

    async def failed() -> bool:
        return await status_of(mongo, reply.id) == c.DELIVERY_STATUS_FAILED

    await eventually(failed, "the attempts to run out")
    assert len(platforms.to("whatsapp", user)) == 3  # CHAT_DELIVERY_MAX_ATTEMPTS
    record = await mongo["deliveries"].find_one({"_id": reply.id})
    assert record is not None
    assert [a["error"]["code"] for a in record["attempts"]] == ["HTTP_503"] * 3

    # A Messenger sender id that is no PSID: refused before any request.
    item, [mid] = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    item["sender"] = {"id": "not-a-psid"}
    payload = {"object": "page", "entry": [{"id": "PAGE", "messaging": [item]}]}
    assert await bridge.meta("messenger", payload, MESSENGER_SECRET) == 200
    bad = await reply_of(mongo, mid)

    async def refused() -> bool:
        return await status_of(mongo, bad.id) == c.DELIVERY_STATUS_FAILED

    await eventually(refused, "the invalid recipient")
    assert platforms.to("messenger", "not-a-psid") == []


async def test_a_delivery_left_by_a_dead_process_is_sent_once(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    _, bridge = stack_up
    user = "1650555" + str(uuid.uuid4().int)[:4]
    payload, wamid = whatsapp_text(user)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)

    await sent(mongo, reply.id, what="the first reply")
    # A second outbound message whose delivery a dead process had claimed: its lease ran out.
    document = await mongo["messages"].find_one({"_id": reply.id})
    assert document is not None
    copy_id = uuid.uuid4().hex
    orphan = c.Message.FromString(document["pb"])
    orphan.id = copy_id
    orphan.sequence += 100
    await mongo["messages"].insert_one(
        {
            **document,
            "_id": copy_id,
            "sequence": orphan.sequence,
            "delivery_status": c.DELIVERY_STATUS_QUEUED,
            "platform_message_id": "",
            "pb": orphan.SerializeToString(),
        }
    )
    now = dt.datetime.now(dt.UTC)
    await mongo["deliveries"].insert_one(
        {
            "_id": copy_id,
            "tenant_id": "acme",
            "conversation_id": orphan.conversation_id,
            "sequence": orphan.sequence,
            "channel": c.CHANNEL_TYPE_WHATSAPP,
            "recipient_id": user,
            "service_url": "",
            "state": "sending",
            "owner": "a-dead-process",
            "attempts": [],
            "budget_start": 0,
            "create_time": now,
            "update_time": now,
            "due_time": now - dt.timedelta(seconds=1),
        }
    )
    before = len(platforms.to("whatsapp", user))

    await sent(mongo, copy_id, what="the orphaned delivery")
    await asyncio.sleep(0.5)
    assert len(platforms.to("whatsapp", user)) == before + 1


async def test_outcomes_recorded_together_keep_all_but_a_delivery_taken_over(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    """Two sends are answered at once (the platform held both); meanwhile another process
    takes one delivery over. The other's outcome is recorded; the taken-over one is left to
    its new owner, not recorded here too."""
    _, bridge = stack_up
    users = [f"1650{uuid.uuid4().int % 10**7:07d}" for _ in range(2)]
    platforms.stall |= set(users)
    wamids = []
    for user in users:
        payload, wamid = whatsapp_text(user)
        assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
        wamids.append(wamid)
    kept, taken = [await reply_of(mongo, wamid) for wamid in wamids]

    async def both_at_the_platform() -> bool:
        return all(platforms.to("whatsapp", user) for user in users)

    await eventually(both_at_the_platform, "both sends")
    await mongo["deliveries"].update_one({"_id": taken.id}, {"$set": {"owner": "another-process"}})
    platforms.release.set()

    await sent(mongo, kept.id, what="the kept delivery's outcome")
    await asyncio.sleep(1.0)  # the other send's outcome has been dealt with by now
    assert await status_of(mongo, taken.id) == c.DELIVERY_STATUS_QUEUED
    delivery = await mongo["deliveries"].find_one({"_id": taken.id})
    assert delivery is not None
    assert (delivery["state"], delivery["owner"], delivery["attempts"]) == (
        "sending",
        "another-process",
        [],
    )


async def test_one_slack_user_in_two_chats_gets_each_answer_in_its_chat(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms
) -> None:
    _, bridge = stack_up
    user = "U" + uuid.uuid4().hex[:8].upper()
    for chat in ("C0PUBLIC1", "D0DIRECT1"):
        event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
        event["event"].update(user=user, channel=chat, ts=f"{time.time():.6f}")
        status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(event).encode())
        assert status == 200

    async def both() -> bool:
        return bool(platforms.to("slack", "C0PUBLIC1") and platforms.to("slack", "D0DIRECT1"))

    await eventually(both, "an answer in each chat")
    assert len(platforms.to("slack", "C0PUBLIC1")) == len(platforms.to("slack", "D0DIRECT1")) == 1


def media_message(mime: str, file_name: str, caption: str) -> c.Message:
    """A reply of stored media (its bytes go with the Outbound)."""
    return c.Message(
        id=f"m-{file_name}",
        content=c.Content(
            media=c.MediaContent(
                media_id=f"stored-{file_name}",
                mime_type=mime,
                caption=caption,
                file_name=file_name,
            )
        ),
    )


async def test_whatsapp_media_is_uploaded_then_sent_by_id(
    platforms: Platforms, tmp_path: Path
) -> None:
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    picture = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048
    message = media_message("image/png", "a.png", "our shop")
    async with aiohttp.ClientSession() as http:
        channel = WhatsAppChannel(http=http, base_url=platforms.base, version="v23.0")
        response = await channel.send_message(
            Outbound(tenant=tenant, message=message, recipient_id="15550001111", media=picture)
        )
    assert response.success
    [(path, headers, upload)] = platforms.sent("whatsapp-media")
    assert path == "whatsapp-media /v23.0/106540352242922/media"
    assert headers["Authorization"] == "Bearer t"
    assert upload == {
        "messaging_product": "whatsapp",
        "type": "image/png",
        "size": len(picture),
        "filename": "a.png",
    }
    [(_, _, upload_send)] = platforms.to("whatsapp /", "15550001111")
    assert upload_send["type"] == "image"
    # The id the platform gave the upload, whose bytes are the picture's.
    [uploaded] = [m for m in platforms.state.media.files.values() if m.file_name == "a.png"]
    assert uploaded.data == picture
    assert upload_send["image"] == {"id": uploaded.media_id, "caption": "our shop"}


async def test_the_platforms_see_the_bot_read_and_type(
    stack_up: tuple[RunningServer, Bridge],
    platforms: Platforms,
    mongo: Mongo,
    teams_keys: TeamsKeys,
) -> None:
    server, bridge = stack_up
    # WhatsApp: the user's message is marked read, with the typing indicator, as the bot
    # starts answering (one call does both; the first only marks it read).
    user = "1650555" + str(uuid.uuid4().int)[:4]
    payload, wamid = whatsapp_text(user)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}

    async def whatsapp_acted() -> bool:
        return len(platforms.actions_to("whatsapp", wamid)) >= 2

    await eventually(whatsapp_acted, "the read receipt and typing indicator on WhatsApp")
    assert sorted(map(json.dumps, platforms.actions_to("whatsapp", wamid))) == sorted(
        [json.dumps(read), json.dumps({**read, "typing_indicator": {"type": "text"}})]
    )
    (path, headers, _) = platforms.requests_to("whatsapp", wamid)[0]
    assert path == "whatsapp /v23.0/106540352242922/messages"
    assert headers["Authorization"] == "Bearer t"
    # An agent typing through the API shows on WhatsApp, against the user's latest message.
    async with grpc.aio.insecure_channel(server.target) as channel:
        agent = ChatClient(channel, "acme")
        await agent.call(
            "SendTypingIndicator",
            chat_pb.SendTypingIndicatorRequest(
                conversation_id=reply.conversation_id,
                participant_id="agent-7",
                typing=True,
                direction=c.MESSAGE_DIRECTION_OUTBOUND,
            ),
        )

        async def agent_typing_shown() -> bool:
            return len(platforms.actions_to("whatsapp", wamid)) >= 3

        await eventually(agent_typing_shown, "the agent's typing indicator on WhatsApp")
        # The user typing (INBOUND) goes to the streams only.
        await agent.call(
            "SendTypingIndicator",
            chat_pb.SendTypingIndicatorRequest(
                conversation_id=reply.conversation_id, participant_id=user, typing=True
            ),
        )
    await asyncio.sleep(0.5)
    assert len(platforms.actions_to("whatsapp", wamid)) == 3

    # Messenger: mark_seen, then typing_on, to the user.
    psid = str(uuid.uuid4().int)[:16]
    item, _ = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    item["sender"] = {"id": psid}
    item["message"].pop("reply_to")
    fb = {"object": "page", "entry": [{"id": "PAGE", "messaging": [item]}]}
    assert await bridge.meta("messenger", fb, MESSENGER_SECRET) == 200

    async def messenger_acted() -> bool:
        return len(platforms.actions_to("messenger", psid)) >= 2

    await eventually(messenger_acted, "mark_seen and typing_on on Messenger")
    assert sorted(a["sender_action"] for a in platforms.actions_to("messenger", psid)) == [
        "mark_seen",
        "typing_on",
    ]
    assert all(a["recipient"] == {"id": psid} for a in platforms.actions_to("messenger", psid))

    # Teams: a typing activity to the conversation, at the verified serviceUrl.
    activity, _ = unique(sample("teams", "activity_message_text_personal.json"), "1485983408511")
    activity["serviceUrl"] = platforms.base + "/"
    activity["from"]["id"] = "29:" + uuid.uuid4().hex
    activity["conversation"]["id"] = "a:" + uuid.uuid4().hex
    status, _ = await bridge.teams(activity, teams_keys.token(serviceurl=platforms.base + "/"))
    assert status == 200
    conversation = activity["conversation"]["id"]

    async def teams_typed() -> bool:
        return bool(platforms.actions_to("teams ", conversation))

    await eventually(teams_typed, "a typing activity on Teams")
    assert platforms.actions_to("teams ", conversation) == [{"type": "typing"}]


async def test_a_rate_limit_on_the_account_holds_every_recipient(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    """WhatsApp's 130429 limits the business number: after it, no reply to anyone goes out
    before the Retry-After has passed (one 429, not one per recipient)."""
    _, bridge = stack_up
    first, second = ("1650555" + str(uuid.uuid4().int)[:4] for _ in range(2))
    platforms.script[first] = [(429, {"error": {"code": 130429}}, {"Retry-After": "3"})]
    payload, wamid = whatsapp_text(first)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    limited_reply = await reply_of(mongo, wamid)

    async def limited() -> bool:
        return bool(platforms.to("whatsapp", first))

    await eventually(limited, "the rate-limited send")
    limited_at = platforms.times[platforms.requests.index(platforms.to("whatsapp", first)[0])]
    payload, wamid = whatsapp_text(second)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    other_reply = await reply_of(mongo, wamid)

    await sent(mongo, limited_reply.id, other_reply.id, what="both replies, after the hold")
    [other] = platforms.to("whatsapp", second)
    other_at = platforms.times[platforms.requests.index(other)]
    assert other_at - limited_at >= 2.5  # held with the first, not sent at once
    assert len(platforms.to("whatsapp", second)) == 1  # and never limited itself


async def test_a_hold_moves_exactly_the_queued_deliveries_it_covers(mongo: Mongo) -> None:
    """What lets every process wait: the queued deliveries a rate limit covers are moved in
    MongoDB (and only those)."""
    deliveries = MongoDeliveries(database=mongo)
    transactions = Transactions(client=mongo.client)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def message(channel: int) -> c.Message:
        return c.Message(id=uuid.uuid4().hex, conversation_id=uuid.uuid4().hex, channel=channel)

    queued = {
        ("acme", "wa-1"): message(c.CHANNEL_TYPE_WHATSAPP),
        ("acme", "wa-2"): message(c.CHANNEL_TYPE_WHATSAPP),
        ("acme", "C111"): message(c.CHANNEL_TYPE_SLACK),
        ("globex", "wa-1"): message(c.CHANNEL_TYPE_WHATSAPP),
    }

    async def enqueue(tx: Any) -> None:
        for (tenant, recipient), m in queued.items():
            await deliveries.enqueue(
                tenant, [m], recipient_id=recipient, service_url="", now=now, tx=tx
            )

    await transactions.run(enqueue)

    async def due(key: tuple[str, str]) -> dt.datetime:
        document = await mongo["deliveries"].find_one({"_id": queued[key].id})
        assert document is not None
        return document["due_time"]

    later = now + dt.timedelta(seconds=30)
    held = await deliveries.hold("acme", c.CHANNEL_TYPE_WHATSAPP, recipient_id="wa-2", until=later)
    assert held == 1
    assert await due(("acme", "wa-2")) == later
    assert await due(("acme", "wa-1")) == now
    latest = now + dt.timedelta(seconds=60)
    held = await deliveries.hold("acme", c.CHANNEL_TYPE_WHATSAPP, recipient_id=None, until=latest)
    assert held == 2
    assert await due(("acme", "wa-1")) == latest
    assert await due(("acme", "wa-2")) == latest
    assert await due(("acme", "C111")) == now  # another platform
    assert await due(("globex", "wa-1")) == now  # another tenant
    # A hold never brings a delivery forward.
    assert (
        await deliveries.hold("acme", c.CHANNEL_TYPE_WHATSAPP, recipient_id=None, until=later) == 0
    )
    assert await due(("acme", "wa-1")) == latest


async def test_messenger_media_is_uploaded_then_sent_by_attachment_id(
    platforms: Platforms, tmp_path: Path
) -> None:
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    picture = b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096
    message = media_message("image/png", "a.png", "**our** shop")
    psid = "2028279607252642"
    async with aiohttp.ClientSession() as http:
        channel = MessengerChannel(http=http, base_url=platforms.base, version="v23.0")
        response = await channel.send_message(
            Outbound(tenant=tenant, message=message, recipient_id=psid, media=picture)
        )
    assert response.success
    [(path, headers, upload)] = platforms.sent("messenger-upload")
    assert path == "messenger-upload /v23.0/me/message_attachments"
    assert headers["Authorization"] == "Bearer t"
    assert upload == {
        "message": {"attachment": {"type": "image", "payload": {"is_reusable": True}}},
        "size": len(picture),
        "filename": "a.png",
        "content_type": "image/png",
    }
    [(_, _, image), (_, _, caption)] = platforms.to("messenger", psid)
    assert image == {
        "recipient": {"id": psid},
        "messaging_type": "RESPONSE",
        "message": {
            "attachment": {"type": "image", "payload": {"attachment_id": "1857777774821032"}}
        },
    }
    assert caption["message"] == {"text": "our shop"}  # Messenger shows no formatting


async def test_slack_media_is_uploaded_externally_then_shared_in_the_channel(
    platforms: Platforms, tmp_path: Path
) -> None:
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    report = b"%PDF-1.7\n" + b"0" * 3000
    message = media_message("application/pdf", "report.pdf", "the **report**")
    async with aiohttp.ClientSession() as http:
        channel = SlackChannel(http=http, base_url=platforms.base)
        response = await channel.send_message(
            Outbound(tenant=tenant, message=message, recipient_id="C0PUBLIC1", media=report)
        )
        # A user id is no channel to share a file in: the caption and the name, as text.
        direct = await channel.send_message(
            Outbound(tenant=tenant, message=message, recipient_id="U0DIRECT1", media=report)
        )
    assert response.success
    assert direct.success
    [(reserve_path, reserve_headers, reserve), (_, _, complete)] = platforms.sent("slack-files")
    assert reserve_path == "slack-files /api/files.getUploadURLExternal"
    assert reserve_headers["Authorization"] == "Bearer xoxb-t"
    assert reserve == {"filename": "report.pdf", "length": str(len(report))}
    [(upload_path, upload_headers, upload)] = platforms.sent("slack-upload")
    assert upload == {"size": len(report)}
    assert "Authorization" not in upload_headers  # the token stays with the Web API
    file_id = upload_path.rsplit("/", 1)[-1]
    assert response.platform_message_id == file_id
    assert complete == {
        "files": [{"id": file_id, "title": "report.pdf"}],
        "channel_id": "C0PUBLIC1",
        "initial_comment": "the *report*",
    }
    [(_, _, text)] = platforms.to("slack /api/chat.postMessage", "U0DIRECT1")
    assert text == {"channel": "U0DIRECT1", "text": "the *report* [report.pdf]"}


async def test_teams_images_go_inline_and_other_media_as_caption_and_name(
    platforms: Platforms, tmp_path: Path
) -> None:
    tenant = load_tenants(Path(tenants_file(tmp_path, TENANTS)))["acme"]
    picture = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048

    conversation = "a:1teams-media"
    async with aiohttp.ClientSession() as http:
        channel = TeamsChannel(http=http, token_url=f"{platforms.base}/token")
        sent = [
            await channel.send_message(
                Outbound(
                    tenant=tenant,
                    message=message,
                    recipient_id=conversation,
                    service_url=platforms.base + "/",
                    media=picture,
                )
            )
            for message in (
                media_message("image/png", "plan.png", "the **plan**"),
                media_message("video/mp4", "plan.mp4", "the **plan**"),
            )
        ]
    assert all(response.success for response in sent)
    [(path, headers, image), (_, _, video)] = platforms.to("teams ", conversation)
    assert path == f"teams /v3/conversations/{conversation}/activities"
    assert headers["Authorization"] == "Bearer teams-app-token"
    assert image == {
        "type": "message",
        "attachments": [
            {
                "contentType": "image/png",
                "contentUrl": "data:image/png;base64," + base64.b64encode(picture).decode(),
                "name": "plan.png",
            }
        ],
        "textFormat": "markdown",
        "text": "the **plan**",
    }
    assert video == {"type": "message", "text": "the **plan** [plan.mp4]"}


async def test_a_server_killed_mid_send_loses_nothing_and_resends_once(
    start_server: StartServer,
    stack: Endpoints,
    tmp_path: Path,
    platforms: Platforms,
    teams_keys: TeamsKeys,
    mongo: Mongo,
    database_name: str,
) -> None:
    """A real server process is killed (SIGKILL) while the platform holds its send. Another
    server takes the delivery over once the lease lapses: the reply is SENT, and the platform
    saw it twice at most (the one gap the platforms' missing idempotency keys leave)."""
    settings = {
        "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
        "CHAT_MONGODB_DATABASE": database_name,
        "CHAT_WHATSAPP_API_BASE": platforms.base,
        "CHAT_DELIVERY_BASE_DELAY_MS": "50",
        "CHAT_DELIVERY_LEASE_SECONDS": "3",
        **JWT_SETTINGS,
    }
    async with chat_server_process(stack, settings) as (doomed, target):
        runner, url = await start_bridge(target, tmp_path, teams_keys.metadata_url)
        try:
            user = "1650555" + str(uuid.uuid4().int)[:4]
            platforms.stall.add(user)
            payload, wamid = whatsapp_text(user)
            async with aiohttp.ClientSession() as http:
                assert (
                    await Bridge(url, http, None).meta("whatsapp", payload, WHATSAPP_SECRET) == 200
                )
            reply = await reply_of(mongo, wamid)

            async def in_flight() -> bool:
                return bool(platforms.to("whatsapp", user))

            await eventually(in_flight, "the send to reach the platform")
        finally:
            await runner.cleanup()
        doomed.send_signal(signal.SIGKILL)
        await asyncio.wait_for(doomed.wait(), 10)
        platforms.release.set()
        assert await status_of(mongo, reply.id) == c.DELIVERY_STATUS_QUEUED
        left = await mongo["deliveries"].find_one({"_id": reply.id})
        assert left is not None  # not lost: still the dead process's, until its lease lapses
        assert left["state"] == "sending"

        await start_server(**settings)  # the next process

        await sent(mongo, reply.id, what="the delivery taken over after the lease")
        await asyncio.sleep(0.5)
        assert len(platforms.to("whatsapp", user)) == 2  # the lost answer's send, and one more
        record = await mongo["deliveries"].find_one({"_id": reply.id})
        assert record is not None
        assert record["state"] == "sent"


async def test_receipts_that_come_before_the_send_is_recorded_are_applied_after(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    """WhatsApp reports "delivered" and "read" while the send's answer is still on its way:
    the receipts wait, and once the outcome is recorded the message is READ."""
    _, bridge = stack_up
    user = "1650" + str(uuid.uuid4().int)[:7]
    out_id = f"wamid.early-{uuid.uuid4().hex}"
    platforms.stall.add(user)
    platforms.script[user] = [
        (200, {"messaging_product": "whatsapp", "messages": [{"id": out_id}]}, {})
    ]
    payload, wamid = whatsapp_text(user)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)

    async def at_the_platform() -> bool:
        return bool(platforms.to("whatsapp", user))

    await eventually(at_the_platform, "the send")
    for status in ("sent", "read", "delivered"):
        receipt = sample("whatsapp", "webhook_status_sent.json")
        item = receipt["entry"][0]["changes"][0]["value"]["statuses"][0]
        item.update(id=out_id, status=status, recipient_id=user)
        assert await bridge.meta("whatsapp", receipt, WHATSAPP_SECRET) == 200
    assert await status_of(mongo, reply.id) == c.DELIVERY_STATUS_QUEUED
    assert await mongo["early_receipts"].count_documents({"platform_message_id": out_id}) == 3
    async with grpc.aio.insecure_channel(stack_up[0].target) as channel:
        stream = Stream(ChatClient(channel, "acme"), reply.conversation_id)
        await stream.live()
        platforms.release.set()

        async def read() -> bool:
            return await status_of(mongo, reply.id) == c.DELIVERY_STATUS_READ

        await eventually(read, "the parked receipts applied")
        # The streams see the status move forward only: the send, then what came before it.
        statuses: list[int] = []
        while len(statuses) < 3:
            event = await stream.next()
            if event.WhichOneof("event") == "delivery_status":
                statuses.append(event.delivery_status.status)
        assert statuses == [
            c.DELIVERY_STATUS_SENT,
            c.DELIVERY_STATUS_DELIVERED,
            c.DELIVERY_STATUS_READ,
        ]
        stream.cancel()
    document = await mongo["messages"].find_one({"_id": reply.id})
    assert document is not None
    assert document["platform_message_id"] == out_id
    assert await mongo["early_receipts"].count_documents({"platform_message_id": out_id}) == 0
