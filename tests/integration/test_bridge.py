"""The webhook bridge, running, in front of the running chat server (embedded stack): every
platform's samples correctly signed and stored; handshakes, every refusal, batches, retries
(sequential and racing), the server down, and the Teams JWT path against a local JWKS."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from devstack.processes import free_port
from devstack.stack import Endpoints
from tests.support.bot_framework import SERVICE_URL, TEAMS_APP, TeamsKeys, no_defaults
from tests.support.bridge import (
    MESSENGER_SECRET,
    TENANTS,
    WHATSAPP_SECRET,
    Bridge,
    sample,
    start_bridge,
    unique,
)
from tests.support.chat_client import JWT_SETTINGS
from tests.support.keys import KeyPair
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, Any]]
#: How long the server stays down in the restart test.
OUTAGE_SECONDS = 8.0


@pytest.fixture
async def bridge(
    start_server: StartServer, tmp_path: Path, teams_keys: TeamsKeys
) -> AsyncIterator[Bridge]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    runner, url = await start_bridge(server.target, tmp_path, teams_keys.metadata_url)
    async with aiohttp.ClientSession() as http:
        yield Bridge(url, http, server)
    await runner.cleanup()


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[Mongo]:
    client: Mongo = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


async def stored(mongo: Mongo, platform_message_id: str) -> list[c.Message]:
    cursor = mongo["chat"]["messages"].find(
        {"tenant_id": "acme", "platform_message_id": platform_message_id}
    )
    return [c.Message.FromString(document["pb"]) async for document in cursor]


WHATSAPP_MESSAGES = [
    ("webhook_text_message.json", "text"),
    ("webhook_image_message.json", "media"),
    ("webhook_document_message.json", "media"),
    ("webhook_location_message.json", "location"),
    ("webhook_button_message.json", "interactive_reply"),
    ("webhook_interactive_button_reply_message.json", "interactive_reply"),
    ("webhook_interactive_list_reply_message.json", "interactive_reply"),
    ("webhook_contact_sharing_message.json", "text"),
]


async def test_whatsapp_samples_are_stored(bridge: Bridge, mongo: Mongo) -> None:
    for name, kind in WHATSAPP_MESSAGES:
        original = sample("whatsapp", name)
        wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        payload, [fresh] = unique(original, wamid)
        assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200, name
        [message] = await stored(mongo, fresh)
        assert message.content.WhichOneof("kind") == kind, name
        assert message.channel == c.CHANNEL_TYPE_WHATSAPP
        assert message.sender_id == "16505551234"
    for name in (
        "webhook_reaction_message.json",
        "webhook_order_message.json",
        "webhook_system_message.json",
        "webhook_unsupported_message.json",
        "webhook_group_create_message.json",
        "webhook_status_sent.json",  # for a message not (yet) sent: deferred
    ):
        assert await bridge.meta("whatsapp", sample("whatsapp", name), WHATSAPP_SECRET) == 200
    # Another tenant's number on the same Meta app: signed alike, but not this tenant's.
    foreign, [foreign_id] = unique(
        sample("whatsapp", "webhook_text_message.json"),
        sample("whatsapp", "webhook_text_message.json")["entry"][0]["changes"][0]["value"][
            "messages"
        ][0]["id"],
    )
    foreign["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    assert await bridge.meta("whatsapp", foreign, WHATSAPP_SECRET) == 200
    assert await stored(mongo, foreign_id) == []
    async with bridge.http.get(bridge.url + "/metrics") as response:
        metrics = await response.text()
    assert 'chat_bridge_ignored_total{kind="message",platform="whatsapp"} 4.0' in metrics
    assert 'chat_bridge_ignored_total{kind="foreign-account",platform="whatsapp"} 1.0' in metrics
    assert 'chat_bridge_events_total{outcome="deferred",platform="whatsapp"} 1.0' in metrics
    assert 'chat_bridge_webhooks_total{platform="whatsapp",status="200"}' in metrics


async def test_handshakes(bridge: Bridge) -> None:
    for platform, token in (("whatsapp", "wa-verify"), ("messenger", "fb-verify")):
        query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"}
        url = f"{bridge.url}/webhooks/{platform}/acme?{urllib.parse.urlencode(query)}"
        async with bridge.http.get(url) as response:
            assert (response.status, await response.text()) == (200, "1158201444")
        wrong = {**query, "hub.verify_token": "guess"}
        url = f"{bridge.url}/webhooks/{platform}/acme?{urllib.parse.urlencode(wrong)}"
        async with bridge.http.get(url) as response:
            assert response.status == 403
        url = f"{bridge.url}/webhooks/{platform}/nobody?{urllib.parse.urlencode(query)}"
        async with bridge.http.get(url) as response:
            assert response.status == 404
    # Slack's url_verification is signed like everything else.
    body = json.dumps(sample("slack", "url_verification.json")).encode()
    status, text = await bridge.slack("/webhooks/slack/acme", body)
    assert status == 200
    assert json.loads(text)["challenge"] == sample("slack", "url_verification.json")["challenge"]
    status, _ = await bridge.post(
        "/webhooks/slack/acme", body, {"Content-Type": "application/json"}
    )
    assert status == 401


async def test_every_refusal_stores_nothing(bridge: Bridge, mongo: Mongo) -> None:
    original = sample("whatsapp", "webhook_text_message.json")
    wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    payload, [fresh] = unique(original, wamid)
    body = json.dumps(payload).encode()
    good = "sha256=" + hmac.new(WHATSAPP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("/webhooks/whatsapp/acme", body, {"Content-Type": "application/json"}, 401),
        (
            "/webhooks/whatsapp/acme",
            body,
            {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64},
            403,
        ),
        (
            "/webhooks/whatsapp/acme",
            body + b" ",
            {"Content-Type": "application/json", "X-Hub-Signature-256": good},
            403,
        ),
        (
            "/webhooks/whatsapp/acme",
            body,
            {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=\u00e9"},
            403,
        ),
        ("/webhooks/whatsapp/nobody", body, {"X-Hub-Signature-256": good}, 404),
        ("/webhooks/whatsapp/globex", body, {"X-Hub-Signature-256": good}, 404),  # not set up
        (
            "/webhooks/whatsapp/acme",
            b"x" * (70 * 1024),
            {"Content-Type": "application/json", "X-Hub-Signature-256": good},
            413,
        ),
    ]
    for path, data, headers, expected in cases:
        status, text = await bridge.post(path, data, headers)
        assert status == expected, (expected, text)
        assert "Traceback" not in text
        assert json.loads(text)["error"]
    # Correctly signed but unusable (JSON broken off): acknowledged, so the platform stops
    # retrying, and counted as rejected; still nothing stored.
    broken = b'{"object": "whatsapp_business_account", '
    signature = "sha256=" + hmac.new(WHATSAPP_SECRET.encode(), broken, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    status, text = await bridge.post("/webhooks/whatsapp/acme", broken, headers)
    assert (status, json.loads(text)["rejected"]) == (200, 1), text
    assert await stored(mongo, fresh) == []
    async with bridge.http.get(bridge.url + "/metrics") as response:
        metrics = await response.text()
    assert 'chat_bridge_rejected_total{platform="whatsapp",reason="malformed-json"} 1.0' in metrics
    # A signed body whose (unsigned) Content-Type a proxy rewrote is still the platform's:
    # stored, never acknowledged and dropped.
    headers = {"Content-Type": "text/plain", "X-Hub-Signature-256": good}
    status, text = await bridge.post("/webhooks/whatsapp/acme", body, headers)
    assert (status, json.loads(text)["received"]) == (200, 1), text
    assert len(await stored(mongo, fresh)) == 1
    # Slack: a replayed (old) request is refused even with a valid signature.
    event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
    status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(event).encode(), age=301)
    assert status == 403


async def test_batches_and_retries_store_each_message_once(bridge: Bridge, mongo: Mongo) -> None:
    text = sample("whatsapp", "webhook_text_message.json")
    wamid = text["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    entries = []
    ids = []
    for _ in range(3):
        copy_, [fresh] = unique(text, wamid)
        entries += copy_["entry"]
        ids.append(fresh)
    batch = {"object": "whatsapp_business_account", "entry": entries}
    # Retries racing the first delivery (none stored yet), then a late sequential one.
    racing = await asyncio.gather(
        *(bridge.meta("whatsapp", batch, WHATSAPP_SECRET) for _ in range(5))
    )
    assert racing == [200] * 5
    assert await bridge.meta("whatsapp", batch, WHATSAPP_SECRET) == 200
    for fresh in ids:
        assert len(await stored(mongo, fresh)) == 1
    # Slack retries carry X-Slack-Retry-Num and the same event_id.
    event, [event_id] = unique(sample("slack", "event_message_text.json"), "Ev111")
    event["event"]["ts"] = f"{time.time():.6f}"
    body = json.dumps(event).encode()
    for _ in range(2):
        status, _ = await bridge.slack("/webhooks/slack/acme", body)
        assert status == 200
    assert len(await stored(mongo, event["event"]["ts"])) == 1
    assert event_id


async def test_messenger_and_slack_and_their_own_echoes(bridge: Bridge, mongo: Mongo) -> None:
    item, [mid] = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    echo, [echo_mid] = unique(item, mid)
    echo["message"]["is_echo"] = True
    quick, [quick_mid] = unique(
        sample("messenger", "event_message_text_quick_reply.json"),
        "mid.1457764197618:41d102a3e1ae206a38",
    )
    payload = {"object": "page", "entry": [{"id": "PAGE", "messaging": [item, echo, quick]}]}
    assert await bridge.meta("messenger", payload, MESSENGER_SECRET) == 200
    [text] = await stored(mongo, mid)
    assert text.content.text.text == "hello, world!"
    assert await stored(mongo, echo_mid) == []  # the page's own message is never answered
    [choice] = await stored(mongo, quick_mid)
    assert choice.content.interactive_reply.selected_id == "<DEVELOPER_DEFINED_PAYLOAD>"

    bot, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
    bot["event"]["bot_id"] = "B1"
    bot["event"]["ts"] = f"{time.time():.6f}"
    status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(bot).encode())
    assert status == 200
    assert await stored(mongo, bot["event"]["ts"]) == []
    click = sample("slack", "interactivity_block_actions_button.json")
    click["trigger_id"] = uuid.uuid4().hex
    form = urllib.parse.urlencode({"payload": json.dumps(click)}).encode()
    status, _ = await bridge.slack(
        "/webhooks/slack/acme/interactivity", form, "application/x-www-form-urlencoded"
    )
    assert status == 200
    document = await mongo["chat"]["messages"].find_one(
        {"tenant_id": "acme", "platform_message_id": {"$regex": click["trigger_id"]}}
    )
    assert document is not None
    message = c.Message.FromString(document["pb"])
    assert message.content.interactive_reply.selected_id == "click_me_123"


async def test_teams_tokens_are_verified_against_the_bot_framework_keys(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys
) -> None:
    activity, [activity_id] = unique(
        sample("teams", "activity_message_text_personal.json"), "1485983408511"
    )
    body = json.dumps(activity).encode()

    async def send(token: str | None, data: bytes = body) -> int:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, _ = await bridge.post("/webhooks/teams/acme", data, headers)
        return status

    assert await send(None) == 401
    assert await send(teams_keys.token(aud="someone-else")) == 403
    assert await send(teams_keys.token(serviceurl="https://evil.example/")) == 403
    assert await send(teams_keys.token(iss="https://evil.example")) == 401
    assert await send(teams_keys.token(exp=int(time.time()) - 600)) == 401
    stranger = KeyPair.rsa("unknown-kid")
    forged = stranger.sign(
        {"aud": TEAMS_APP, "iss": "https://api.botframework.com", "serviceurl": SERVICE_URL},
        **{k: v for k, v in no_defaults().items() if k not in ("aud", "iss")},
    )
    assert await send(forged) == 401
    import jwt  # noqa: PLC0415

    hs256 = jwt.encode(
        {
            "aud": TEAMS_APP,
            "iss": "https://api.botframework.com",
            "serviceurl": SERVICE_URL,
            "exp": int(time.time()) + 300,
        },
        "a-guessable-shared-secret-of-32-bytes",
        algorithm="HS256",
        headers={"kid": "bf-key-1"},
    )
    assert await send(hs256) == 401  # only RS256 is accepted
    unsigned = jwt.encode({"aud": TEAMS_APP}, None, algorithm="none")
    assert await send(unsigned) == 401
    other_channel = copy.deepcopy(activity)
    other_channel["channelId"] = "skype"
    assert await send(teams_keys.token(), json.dumps(other_channel).encode()) == 403
    assert await stored(mongo, activity_id) == []
    assert await send(teams_keys.token()) == 200
    [message] = await stored(mongo, activity_id)
    assert message.channel == c.CHANNEL_TYPE_TEAMS
    assert message.metadata["service_url"] == SERVICE_URL
    invoke = {
        "type": "invoke",
        "name": "adaptiveCard/action",
        "id": uuid.uuid4().hex,
        "channelId": "msteams",
        "serviceUrl": SERVICE_URL,
        "from": {"id": activity["from"]["id"]},
        "conversation": activity["conversation"],
        "value": {"action": {"type": "Action.Execute", "verb": "approve", "title": "Approve"}},
    }
    status, text = await bridge.teams(invoke, teams_keys.token())
    assert status == 200
    assert json.loads(text)["statusCode"] == 200


async def test_the_server_down_is_503_so_the_platform_retries(
    tmp_path: Path, teams_keys: TeamsKeys, mongo: Mongo
) -> None:
    # A port held bound but not listening: connections to it are refused for the whole test,
    # where a port merely free when picked may be taken meanwhile by any server binding port 0
    # (a 200 from another server once failed this test in CI).
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))
    down_target = f"127.0.0.1:{reserved.getsockname()[1]}"
    runner, url = await start_bridge(down_target, tmp_path, teams_keys.metadata_url)
    try:
        async with aiohttp.ClientSession() as http:
            down = Bridge(url, http, None)
            original = sample("whatsapp", "webhook_text_message.json")
            wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            payload, [fresh] = unique(original, wamid)
            assert await down.meta("whatsapp", payload, WHATSAPP_SECRET) == 503
            event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
            status, _ = await down.slack("/webhooks/slack/acme", json.dumps(event).encode())
            assert status == 503
            async with http.get(url + "/healthz") as response:
                assert response.status == 503
    finally:
        await runner.cleanup()
        reserved.close()
    assert await stored(mongo, fresh) == []


async def test_a_server_back_on_its_port_takes_the_next_webhook_at_once(
    start_server: StartServer, tmp_path: Path, teams_keys: TeamsKeys, mongo: Mongo
) -> None:
    # While the server is down, the bridge's connection waits out a reconnect backoff; a
    # webhook arriving just after the restart must wait for the connection within its
    # deadline rather than fail on the last refusal. The outage lasts long enough for gRPC's
    # default backoff (1 s, 1.6 s, 2.56 s, 4.1 s, 6.6 s...) to put the next attempt past that
    # deadline: the bridge's own backoff stops growing at a second.
    port = free_port()
    settings = {
        "CHAT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
        **JWT_SETTINGS,
    }
    first = await start_server(**settings)
    runner, url = await start_bridge(first.target, tmp_path, teams_keys.metadata_url)
    try:
        async with aiohttp.ClientSession() as http:
            bridge = Bridge(url, http, first)
            original = sample("whatsapp", "webhook_text_message.json")
            wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            before, [stored_before] = unique(original, wamid)
            assert await bridge.meta("whatsapp", before, WHATSAPP_SECRET) == 200
            await first.server.stop()
            lost, [refused] = unique(original, wamid)
            assert await bridge.meta("whatsapp", lost, WHATSAPP_SECRET) == 503
            await asyncio.sleep(OUTAGE_SECONDS)
            await start_server(**settings)
            after, [stored_after] = unique(original, wamid)
            assert await bridge.meta("whatsapp", after, WHATSAPP_SECRET) == 200
    finally:
        await runner.cleanup()
    assert len(await stored(mongo, stored_before)) == 1
    assert await stored(mongo, refused) == []
    assert len(await stored(mongo, stored_after)) == 1


async def test_the_remaining_event_types_of_each_platform(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys
) -> None:
    # Messenger: a postback, an attachment, a delivery and a read receipt in one POST.
    postback = sample("messenger", "event_messaging_postbacks_notification.json")["value"]
    postback, [postback_mid] = unique(postback, "m_MESSAGE-ID")
    postback["sender"] = {"id": "PSID-9"}
    postback["timestamp"] = int(time.time() * 1000)
    entry = sample("messenger", "event_message_attachment_entry.json")
    entry, [attachment_mid] = unique(entry, "mid.$cAAJdkrCd2ORnva8ErFhjGm0X_Q_c")
    entry["messaging"][0]["message"]["attachments"][0]["type"] = "image"
    entry["id"] = "PAGE"  # the tenant's page (another page's entries are not this tenant's)
    deliveries = sample("messenger", "event_message_deliveries.json")
    reads = sample("messenger", "event_message_reads.json")
    payload = {
        "object": "page",
        "entry": [{"id": "PAGE", "messaging": [postback, deliveries, reads]}, entry],
    }
    assert await bridge.meta("messenger", payload, MESSENGER_SECRET) == 200
    [choice] = await stored(mongo, postback_mid)
    assert choice.content.interactive_reply.selected_id == "USER-DEFINED-PAYLOAD"
    [picture] = await stored(mongo, attachment_mid)
    assert picture.type == c.MESSAGE_TYPE_IMAGE

    # Slack: a message with a file.
    shared, [event_id] = unique(sample("slack", "event_message_file_share_image.json"), "F111")
    shared["event_id"] = "Ev" + uuid.uuid4().hex
    shared["type"] = "event_callback"
    shared["event"].setdefault("user", "U111")
    shared["event"]["channel"] = "C111"
    shared["event"]["ts"] = f"{time.time():.6f}"
    status, _ = await bridge.slack("/webhooks/slack/acme", json.dumps(shared).encode())
    assert status == 200
    files = [
        c.Message.FromString(document["pb"])
        async for document in mongo["chat"]["messages"].find(
            {"tenant_id": "acme", "platform_message_id": {"$regex": shared["event"]["ts"]}}
        )
    ]
    assert any(m.content.media.platform_media_id == event_id for m in files) or any(
        m.metadata.get("platform_media_id") == event_id for m in files
    )

    # Teams: typing and a read receipt (nothing of ours to mark: acknowledged).
    base = sample("teams", "activity_message_text_personal.json")
    for extra in (
        {"type": "typing", "id": uuid.uuid4().hex},
        {
            "type": "event",
            "name": "application/vnd.microsoft.readReceipt",
            "id": uuid.uuid4().hex,
            "value": {"lastReadMessageId": "10101010"},
        },
    ):
        activity = {**{k: base[k] for k in ("from", "conversation", "recipient")}, **extra}
        activity.update(channelId="msteams", serviceUrl=SERVICE_URL)
        status, _ = await bridge.teams(activity, teams_keys.token())
        assert status == 200


async def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (a client library would refuse to send a
    header that is not UTF-8); the status and the body of the answer."""
    parsed = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    try:
        writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_requests_malformed_before_the_signature_get_a_4xx(bridge: Bridge) -> None:
    """Anyone can send these: each is refused with a reason, never a 500 or a traceback."""
    body = json.dumps(sample("whatsapp", "webhook_text_message.json")).encode()
    signature = "sha256=" + hmac.new(WHATSAPP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    for encoding in ("gzip", "deflate"):
        status, text = await bridge.post(
            "/webhooks/whatsapp/acme",
            body,
            {
                "Content-Type": "application/json",
                "Content-Encoding": encoding,
                "X-Hub-Signature-256": signature,
            },
        )
        assert status == 400, (encoding, status, text)
        assert "Content-Encoding" in json.loads(text)["error"]
    # A Slack timestamp far too long to be a time: a stale request, not an overflow.
    event, _ = unique(sample("slack", "event_message_text.json"), "Ev400")
    status, text = await bridge.post(
        "/webhooks/slack/acme",
        json.dumps(event).encode(),
        {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": "9" * 400,
            "X-Slack-Signature": "v0=" + "0" * 64,
        },
    )
    assert status == 403, text
    assert json.loads(text)["error"]
    # A Teams Authorization header that is not UTF-8.
    host = urllib.parse.urlsplit(bridge.url).netloc.encode()
    status, answer = await raw_request(
        bridge.url,
        b"POST /webhooks/teams/acme HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer \xff\xfe.abc.def\r\n",
        b"{}",
    )
    assert status == 401, answer
    assert json.loads(answer)["error"]
    assert b"Traceback" not in answer
