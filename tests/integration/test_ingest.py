"""IngestService on the real servers: messages stored before the answer and replied to from the
durable queue, deduplication (sequential and racing), forward-only delivery status with
out-of-order receipts and watermarks, typing, and bad events."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from PIL import Image
from pymongo import AsyncMongoClient

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from chat.v1 import ingest_service_pb2 as ingest
from devstack.stack import Endpoints
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.ingest import (
    WHATSAPP,
    Bridge,
    conversation_of,
    deliveries_settled,
    history,
    replied,
    text_event,
)
from tests.support.servers import RunningServer, tenants_file
from tests.support.streams import Stream

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, Any]]


def status_event(
    user: str, status: int, *ids: str, watermark: dt.datetime | None = None
) -> ingest.InboundEvent:
    event = ingest.InboundEvent(
        platform_event_id=f"status-{uuid.uuid4().hex}",
        channel=WHATSAPP,
        platform_user_id=user,
        status=ingest.StatusReport(status=status, platform_message_ids=ids),  # type: ignore[arg-type]
    )
    if watermark is not None:
        event.status.watermark_time.FromDatetime(watermark)
    return event


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    return await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)


@pytest.fixture
async def clients(server: RunningServer) -> AsyncIterator[tuple[Bridge, ChatClient]]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield Bridge(channel, "acme"), ChatClient(channel, "acme")


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[Mongo]:
    client: Mongo = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


async def test_a_message_is_stored_then_answered_from_the_queue(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    [result] = await bridge.ingest(text_event(user, "hello"))
    assert result.outcome == ingest.INGEST_OUTCOME_ACCEPTED
    cid = await conversation_of(mongo, result.message_id)
    inbound, reply = await replied(client, cid, 2)
    assert inbound.id == result.message_id
    assert (inbound.sender_id, inbound.channel) == (user, WHATSAPP)
    assert inbound.platform_message_id.startswith("wamid.")
    assert inbound.metadata["user_display_name"] == "Ana"
    assert reply.direction == c.MESSAGE_DIRECTION_OUTBOUND
    # Handed to the delivery queue in the same transaction (which fails it at once here:
    # this tenant has no WhatsApp credentials).
    assert reply.delivery_status in (c.DELIVERY_STATUS_QUEUED, c.DELIVERY_STATUS_FAILED)
    assert await mongo["chat"]["deliveries"].find_one({"_id": reply.id}) is not None
    assert reply.reply_to_message_id == inbound.id
    assert reply.content.text.text == "Hello! How can I help you today?"
    assert await mongo["chat"]["reply_jobs"].count_documents({"conversation_id": cid}) == 0


async def test_platform_retries_store_nothing_twice_also_when_they_race(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    event = text_event(user, "once")
    [first] = await bridge.ingest(event)
    [again] = await bridge.ingest(event)
    assert (first.outcome, again.outcome) == (
        ingest.INGEST_OUTCOME_ACCEPTED,
        ingest.INGEST_OUTCOME_DUPLICATE,
    )
    racing = text_event(user, "raced")
    outcomes = [
        r
        for batch in await asyncio.gather(*(bridge.ingest(racing) for _ in range(6)))
        for r in batch
    ]
    assert (
        sorted(r.outcome for r in outcomes)
        == [ingest.INGEST_OUTCOME_ACCEPTED] + [ingest.INGEST_OUTCOME_DUPLICATE] * 5
    )
    cid = await conversation_of(mongo, first.message_id)
    messages = await replied(client, cid, 4)
    await asyncio.sleep(0.5)
    messages = await history(client, cid)
    inbound = [m.content.text.text for m in messages if m.direction == c.MESSAGE_DIRECTION_INBOUND]
    assert inbound == ["once", "raced"]
    assert len(messages) == 4  # one reply each


async def test_a_retry_after_the_conversation_closed_starts_nothing(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    event = text_event(user, "before closing")
    [first] = await bridge.ingest(event)
    cid = await conversation_of(mongo, first.message_id)
    await replied(client, cid, 2)
    await client.call("CloseConversation", chat.CloseConversationRequest(conversation_id=cid))
    [again] = await bridge.ingest(event)
    assert again.outcome == ingest.INGEST_OUTCOME_DUPLICATE
    conversations = mongo["chat"]["conversations"]
    assert await conversations.count_documents({"tenant_id": "acme", "user_id": user}) == 1
    [later] = await bridge.ingest(text_event(user, "a new message"))  # starts the next one
    assert later.outcome == ingest.INGEST_OUTCOME_ACCEPTED
    assert await conversation_of(mongo, later.message_id) != cid


async def test_concurrent_messages_share_transactions_and_keep_their_order(
    server: RunningServer, clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    """Group commit: messages arriving together are stored in shared transactions, each
    conversation's in order, counted, with one reply each; an event id that comes twice at
    once (here from two users, so the two may share a batch) is stored once, and the rest of
    its batch is stored all the same."""
    bridge, client = clients
    users = ["1555" + uuid.uuid4().hex[:7] for _ in range(12)]
    twin = "wamid." + uuid.uuid4().hex

    async def user_writes(user: str) -> list[ingest.IngestResult]:
        # A platform delivers one user's messages in order; the users are concurrent.
        return [r for text in ("one", "two") for r in await bridge.ingest(text_event(user, text))]

    twin_users = ["1555" + uuid.uuid4().hex[:7] for _ in range(2)]
    *per_user, twin_a, twin_b = await asyncio.gather(
        *(user_writes(u) for u in users),
        *(bridge.ingest(text_event(u, "twin", twin)) for u in twin_users),
    )
    assert sorted(r.outcome for r in (*twin_a, *twin_b)) == [
        ingest.INGEST_OUTCOME_ACCEPTED,
        ingest.INGEST_OUTCOME_DUPLICATE,
    ]
    assert await mongo["chat"]["messages"].count_documents({"platform_message_id": twin}) == 1
    for user, results in zip(users, per_user, strict=True):
        assert [r.outcome for r in results] == [ingest.INGEST_OUTCOME_ACCEPTED] * 2
        cid = await conversation_of(mongo, results[0].message_id)
        assert await conversation_of(mongo, results[1].message_id) == cid
        messages = await replied(client, cid, 4)
        inbound = [m for m in messages if m.direction == c.MESSAGE_DIRECTION_INBOUND]
        assert [m.content.text.text for m in inbound] == ["one", "two"]
        assert {m.sender_id for m in inbound} == {user}
        assert [m.id for m in inbound] == [r.message_id for r in results]
        assert sorted(m.reply_to_message_id for m in messages if m not in inbound) == sorted(
            m.id for m in inbound
        )
        assert [m.sequence for m in messages] == [1, 2, 3, 4]
        state = await client.call(
            "GetConversation", chat.GetConversationRequest(conversation_id=cid)
        )
        assert state.conversation.inbound_message_count == 2
        assert state.conversation.last_sequence == 4
    registry = server.server.metrics.registry
    batches = registry.get_sample_value("chat_group_commit_batch_size_count", {"call": "ingest"})
    stored = registry.get_sample_value("chat_group_commit_batch_size_sum", {"call": "ingest"})
    assert stored == 2 * len(users) + 1  # every message stored, in committed batches, once
    assert batches is not None
    assert batches < stored  # some transactions held several
    # The replies too: each user's two answered (waited for above), in shared transactions.
    answered = registry.get_sample_value("chat_group_commit_batch_size_sum", {"call": "reply"})
    reply_batches = registry.get_sample_value(
        "chat_group_commit_batch_size_count", {"call": "reply"}
    )
    assert answered is not None
    assert reply_batches is not None
    assert answered >= 2 * len(users)
    assert reply_batches < answered


async def test_receipts_only_move_status_forward(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    [result] = await bridge.ingest(text_event(user, "hi"))
    cid = await conversation_of(mongo, result.message_id)
    _, reply = await replied(client, cid, 2)
    await deliveries_settled(mongo, cid)  # its FAILED status is not on the stream below
    # What the delivery path does once the platform accepted the reply.
    await mongo["chat"]["messages"].update_one(
        {"_id": reply.id},
        {"$set": {"platform_message_id": "wamid.out-1", "delivery_status": c.DELIVERY_STATUS_SENT}},
    )

    async def status() -> int:
        [message] = [m for m in await history(client, cid) if m.id == reply.id]
        return message.delivery_status

    stream = Stream(client, cid)
    await stream.live()  # delivery status travels live only: subscribed before the receipt
    read = await bridge.ingest(status_event(user, c.DELIVERY_STATUS_READ, "wamid.out-1"))
    assert read[0].outcome == ingest.INGEST_OUTCOME_ACCEPTED  # read without delivered first
    assert await status() == c.DELIVERY_STATUS_READ
    for late in (c.DELIVERY_STATUS_DELIVERED, c.DELIVERY_STATUS_SENT, c.DELIVERY_STATUS_FAILED):
        [outcome] = await bridge.ingest(status_event(user, late, "wamid.out-1"))
        assert outcome.outcome == ingest.INGEST_OUTCOME_IGNORED
        assert await status() == c.DELIVERY_STATUS_READ
    # A receipt for an id no message has (yet): kept, in case its send is recorded later.
    [unknown] = await bridge.ingest(status_event(user, c.DELIVERY_STATUS_READ, "wamid.nope"))
    assert unknown.outcome == ingest.INGEST_OUTCOME_DEFERRED
    # A receipt naming no message (an empty id) marks nothing, anywhere.
    [empty] = await bridge.ingest(status_event(user, c.DELIVERY_STATUS_READ, ""))
    assert empty.outcome == ingest.INGEST_OUTCOME_IGNORED
    update = (await stream.next()).delivery_status
    assert (update.message_id, update.status) == (reply.id, c.DELIVERY_STATUS_READ)
    stream.cancel()


async def test_a_failure_is_overruled_by_a_later_delivery_and_watermarks_cover_earlier_messages(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "psid-" + uuid.uuid4().hex[:8]
    [result] = await bridge.ingest(text_event(user, "hi"))
    cid = await conversation_of(mongo, result.message_id)
    _, reply = await replied(client, cid, 2)
    # Its delivery fails at once (no credentials) and marks it FAILED: not after the SENT below.
    await deliveries_settled(mongo, cid)
    await mongo["chat"]["messages"].update_one(
        {"_id": reply.id},
        {"$set": {"platform_message_id": "m_1", "delivery_status": c.DELIVERY_STATUS_SENT}},
    )
    failed = status_event(user, c.DELIVERY_STATUS_FAILED, "m_1")
    failed.status.error.code = "131026"
    assert (await bridge.ingest(failed))[0].outcome == ingest.INGEST_OUTCOME_ACCEPTED
    # A read watermark (Messenger): every message sent before it, named or not.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    [covered] = await bridge.ingest(status_event(user, c.DELIVERY_STATUS_READ, watermark=later))
    assert covered.outcome == ingest.INGEST_OUTCOME_ACCEPTED
    [message] = [m for m in await history(client, cid) if m.id == reply.id]
    assert message.delivery_status == c.DELIVERY_STATUS_READ


async def test_typing_reaches_the_streams(
    server: RunningServer, clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    [result] = await bridge.ingest(text_event(user, "hi"))
    cid = await conversation_of(mongo, result.message_id)
    await replied(client, cid, 2)
    await deliveries_settled(mongo, cid)
    stream = Stream(client, cid)
    await stream.live()
    typing = ingest.InboundEvent(
        platform_event_id="typing-1",
        channel=WHATSAPP,
        platform_user_id=user,
        typing=ingest.TypingReport(typing=True),
    )
    [outcome] = await bridge.ingest(typing)
    assert outcome.outcome == ingest.INGEST_OUTCOME_ACCEPTED
    event = (await stream.next()).typing
    assert (event.participant_id, event.typing) == (user, True)
    stream.cancel()


async def test_bad_events_are_rejected_one_by_one(clients: tuple[Bridge, ChatClient]) -> None:
    bridge, _ = clients
    good = text_event("1555" + uuid.uuid4().hex[:7], "fine")
    no_id = text_event("15550001111", "x", event_id="")
    web = text_event("15550001111", "x")
    web.channel = c.CHANNEL_TYPE_WEB
    empty = text_event("15550001111", " \x00 ")
    results = await bridge.ingest(no_id, good, web, empty)
    assert [r.outcome for r in results] == [
        ingest.INGEST_OUTCOME_REJECTED,
        ingest.INGEST_OUTCOME_ACCEPTED,
        ingest.INGEST_OUTCOME_REJECTED,
        ingest.INGEST_OUTCOME_REJECTED,
    ]
    assert [r.error_reason for r in results] == [
        "INVALID_EVENT",
        "",
        "INVALID_EVENT",
        "INVALID_CONTENT",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.ingest()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_statuses_timed_at_the_ends_of_time_are_parked_beside_a_message(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    """A receipt timed in year 9999 (or year 1) for a message not sent yet is parked for a day
    by the server's clock, and the message in the same batch is stored: it once overflowed the
    receipt's keep time and failed the whole batch on every retry."""
    bridge, _ = clients
    user = "1555" + uuid.uuid4().hex[:7]
    late, early = (
        status_event(user, c.DELIVERY_STATUS_DELIVERED, f"wamid.{uuid.uuid4().hex}")
        for _ in range(2)
    )
    late.event_time.FromDatetime(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    early.event_time.FromDatetime(dt.datetime(1, 1, 1, tzinfo=dt.UTC))
    before = dt.datetime.now(dt.UTC)
    results = await bridge.ingest(late, text_event(user, "hi"), early)
    assert [r.outcome for r in results] == [
        ingest.INGEST_OUTCOME_DEFERRED,
        ingest.INGEST_OUTCOME_ACCEPTED,
        ingest.INGEST_OUTCOME_DEFERRED,
    ]
    await conversation_of(mongo, results[1].message_id)
    for event in (late, early):
        [parked] = (
            await mongo["chat"]["early_receipts"]
            .find({"platform_message_id": event.status.platform_message_ids[0]})
            .to_list()
        )
        assert parked["status_time"] == event.event_time.ToDatetime(tzinfo=dt.UTC)
        assert before + dt.timedelta(hours=23) < parked["expire_time"]
        assert parked["expire_time"] < dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)


async def test_a_job_left_by_a_dead_process_is_answered_once(
    clients: tuple[Bridge, ChatClient], mongo: Mongo
) -> None:
    bridge, client = clients
    user = "1555" + uuid.uuid4().hex[:7]
    [result] = await bridge.ingest(text_event(user, "hi"))
    cid = await conversation_of(mongo, result.message_id)
    await replied(client, cid, 2)
    # A job claimed by a process that died before storing the reply: its lease has run out.
    now = dt.datetime.now(dt.UTC)
    await mongo["chat"]["reply_jobs"].insert_one(
        {
            "_id": uuid.uuid4().hex,
            "tenant_id": "acme",
            "conversation_id": cid,
            "message_id": result.message_id,
            "sequence": 1,
            "status": "running",
            "owner": "a-dead-process",
            "attempts": 1,
            "enqueue_time": now - dt.timedelta(minutes=2),
            "due_time": now - dt.timedelta(seconds=1),
        }
    )
    messages = await replied(client, cid, 3)
    await asyncio.sleep(0.5)
    assert len(await history(client, cid)) == 3  # answered once more, not twice
    assert messages[2].reply_to_message_id == result.message_id
    assert await mongo["chat"]["reply_jobs"].count_documents({"conversation_id": cid}) == 0


def picture(size: tuple[int, int], image_format: str) -> bytes:
    """An image of ``size`` in ``image_format`` (JPEG, PNG), as a platform would serve it."""
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format=image_format)
    return out.getvalue()


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """A platform stand-in on loopback; its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def fetching_media(
    start_server: StartServer, tmp_path: Path, channel: str, **settings: str
) -> AsyncIterator[tuple[Bridge, ChatClient]]:
    """A server whose tenant acme has one platform channel (``channel``, its YAML) and fetches
    media from the loopback stand-ins; the bridge's view of it and a client's."""
    tenants = f"tenants:\n  - id: acme\n    channels:\n      {channel}\n"
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, tenants),
        CHAT_MEDIA_FETCH_ALLOW_PRIVATE="true",  # the stand-ins listen on loopback
        **settings,
        **JWT_SETTINGS,
    )
    async with grpc.aio.insecure_channel(server.target) as channel_:
        yield Bridge(channel_, "acme"), ChatClient(channel_, "acme")


@pytest.fixture
async def graph_api() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in for the Graph API's media endpoints: GET /v23.0/{media-id} answers the
    media URL, which serves the bytes; both want the tenant's bearer token."""
    seen: list[str] = []
    jpeg = picture((640, 480), "JPEG")

    async def lookup(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer wa-token":
            return web.json_response({"error": {"code": 190}}, status=401)
        media_id = request.match_info["media_id"]
        if media_id == "missing":
            return web.json_response({"error": {"code": 100}}, status=404)
        base = f"{request.scheme}://{request.host}"
        return web.json_response({"url": f"{base}/download/{media_id}", "mime_type": "image/jpeg"})

    async def download(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=jpeg, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/v23.0/{media_id}", lookup)
    app.router.add_get("/download/{media_id}", download)
    async with serving(app) as base:
        yield base, seen


async def test_platform_media_is_fetched_with_the_tenants_token_after_the_ack(
    start_server: StartServer,
    tmp_path: Path,
    graph_api: tuple[str, list[str]],
    mongo: Mongo,
) -> None:
    base, seen = graph_api
    async with fetching_media(
        start_server,
        tmp_path,
        'whatsapp: {verify_token: v, app_secret: s, access_token: wa-token, phone_number_id: "1"}',
        CHAT_WHATSAPP_API_BASE=base,
        CHAT_GRAPH_API_VERSION="v23.0",
    ) as (bridge, client):
        user = "1555" + uuid.uuid4().hex[:7]

        def image(media_id: str) -> ingest.InboundEvent:
            event = text_event(user, "x")
            event.message.content.CopyFrom(
                c.Content(
                    media=c.MediaContent(
                        platform_media_id=media_id, mime_type="image/jpeg", caption="our shop"
                    )
                )
            )
            return event

        [result] = await bridge.ingest(image("1234567890"))
        assert result.outcome == ingest.INGEST_OUTCOME_ACCEPTED
        cid = await conversation_of(mongo, result.message_id)
        inbound, _reply = await replied(client, cid, 2)
        media = inbound.content.media
        assert media.WhichOneof("source") == "media_id"  # stored in GridFS
        assert (media.mime_type, media.width, media.height) == ("image/jpeg", 640, 480)
        assert media.caption == "our shop"
        assert media.thumbnail.media_id
        assert inbound.metadata["platform_media_id"] == "1234567890"
        assert inbound.metadata["media_verified"] == "true"
        assert seen == ["Bearer wa-token", "Bearer wa-token"]

        [missing] = await bridge.ingest(image("missing"))
        await replied(client, cid, 4)
        [kept] = [m for m in await history(client, cid) if m.id == missing.message_id]
        assert kept.content.media.platform_media_id == "missing"  # the reference stays
        assert "HTTP 404" in kept.metadata["media_fetch_error"]


async def test_a_picture_pasted_in_teams_is_fetched_with_the_bot_token_from_its_service_url(
    start_server: StartServer, tmp_path: Path, mongo: Mongo
) -> None:
    """The Bot Connector serves pasted images to the bot's token. The token goes only to the
    serviceUrl the activity was verified for; an attachment elsewhere is fetched without it."""
    png = picture((320, 200), "PNG")
    seen: list[tuple[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_id"] == "teams-app"
        return web.json_response({"access_token": "teams-bot-token", "expires_in": 3600})

    async def attachment(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", "")))
        if request.headers.get("Authorization") != "Bearer teams-bot-token":
            return web.Response(status=401)
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/v3/attachments/{id}/views/original", attachment)
    app.router.add_get("/elsewhere/v3/attachments/{id}/views/original", attachment)
    async with (
        serving(app) as base,
        fetching_media(
            start_server,
            tmp_path,
            "teams: {app_id: teams-app, app_password: teams-secret}",
            CHAT_TEAMS_TOKEN_URL=f"{base}/token",
        ) as (bridge, client),
    ):

        def pasted(url: str, service_url: str) -> ingest.InboundEvent:
            user = "29:" + uuid.uuid4().hex[:10]
            return ingest.InboundEvent(
                platform_event_id=uuid.uuid4().hex,
                channel=c.CHANNEL_TYPE_TEAMS,
                platform_user_id=user,
                channel_conversation_id="a:" + uuid.uuid4().hex[:10],
                service_url=service_url,
                message=ingest.InboundMessage(
                    platform_message_id=uuid.uuid4().hex,
                    content=c.Content(
                        media=c.MediaContent(platform_media_id=url, mime_type="image/png")
                    ),
                ),
            )

        [ours, foreign] = await bridge.ingest(
            pasted(f"{base}/v3/attachments/a1/views/original", f"{base}/"),
            pasted(f"{base}/elsewhere/v3/attachments/a2/views/original", "https://smba.x/"),
        )
        fetched, _ = await replied(client, await conversation_of(mongo, ours.message_id), 2)
        kept, _ = await replied(client, await conversation_of(mongo, foreign.message_id), 2)
    assert fetched.metadata["media_verified"] == "true"
    assert (fetched.content.media.width, fetched.content.media.height) == (320, 200)
    assert kept.content.media.platform_media_id.startswith(f"{base}/elsewhere/")
    assert "401" in kept.metadata["media_fetch_error"]
    assert sorted(seen) == [
        ("/elsewhere/v3/attachments/a2/views/original", ""),
        ("/v3/attachments/a1/views/original", "Bearer teams-bot-token"),
    ]


async def test_a_slack_file_is_found_with_files_info_and_fetched_with_the_bot_token(
    start_server: StartServer, tmp_path: Path, mongo: Mongo
) -> None:
    png = picture((200, 100), "PNG")
    seen: list[tuple[str, str]] = []

    async def files_info(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization", "")))
        if request.query["file"] != "F0SHOP":
            return web.json_response({"ok": False, "error": "file_not_found"})
        base = f"{request.scheme}://{request.host}"
        download = f"{base}/files-pri/T1-F0SHOP/download/shop.png"
        return web.json_response({"ok": True, "file": {"url_private_download": download}})

    async def download(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", "")))
        if request.headers.get("Authorization") != "Bearer xoxb-shop":
            return web.Response(status=403)
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/api/files.info", files_info)
    app.router.add_get("/files-pri/{team_file}/download/{name}", download)
    async with (
        serving(app) as base,
        fetching_media(
            start_server,
            tmp_path,
            "slack: {signing_secret: s, bot_token: xoxb-shop}",
            CHAT_SLACK_API_BASE=base,
        ) as (bridge, client),
    ):

        def shared(file_id: str) -> ingest.InboundEvent:
            return ingest.InboundEvent(
                platform_event_id=uuid.uuid4().hex,
                channel=c.CHANNEL_TYPE_SLACK,
                platform_user_id="U" + uuid.uuid4().hex[:8].upper(),
                channel_conversation_id="D" + uuid.uuid4().hex[:8].upper(),
                message=ingest.InboundMessage(
                    platform_message_id=uuid.uuid4().hex,
                    content=c.Content(
                        media=c.MediaContent(platform_media_id=file_id, file_name="shop.png")
                    ),
                ),
            )

        [found, missing] = await bridge.ingest(shared("F0SHOP"), shared("F0GONE"))
        fetched, _ = await replied(client, await conversation_of(mongo, found.message_id), 2)
        kept, _ = await replied(client, await conversation_of(mongo, missing.message_id), 2)
    assert fetched.metadata["media_verified"] == "true"
    assert (fetched.content.media.mime_type, fetched.content.media.width) == ("image/png", 200)
    assert kept.content.media.platform_media_id == "F0GONE"
    assert "file_not_found" in kept.metadata["media_fetch_error"]
    assert sorted(seen) == [
        ("/api/files.info?file=F0GONE", "Bearer xoxb-shop"),
        ("/api/files.info?file=F0SHOP", "Bearer xoxb-shop"),
        ("/files-pri/T1-F0SHOP/download/shop.png", "Bearer xoxb-shop"),
    ]
