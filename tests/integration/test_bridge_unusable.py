"""Correctly signed webhooks the bridge cannot use, or only in part, sent to the running bridge
in front of the running chat server: each is acknowledged with 200 (a platform retries anything
else for hours, then disables the webhook), counted and logged as rejected once, without a
traceback; the usable events of a batch are stored. Nothing a platform sends yields a 5xx."""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from structlog.processors import CallsiteParameter, CallsiteParameterAdder
from structlog.testing import capture_logs

from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from tests.support.bot_framework import SERVICE_URL, TeamsKeys
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
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, Any]]
Logs = list[dict[str, Any]]
BRIDGE_MODULES = {
    path.stem for path in (Path(__file__).parents[2] / "webhook_bridge").rglob("*.py")
}


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


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    """The structlog lines logged meanwhile; afterwards, that nothing (aiohttp's loggers
    included) was logged at error level or with a traceback."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with capture_logs(processors=[CallsiteParameterAdder([CallsiteParameter.MODULE])]) as logs:
        yield logs
    # At teardown caplog.records holds the teardown's records: the test's are the call's.
    # The server's own lines (its reply worker failing to reach the platforms) are not ours.
    ours = [
        r
        for r in [*caplog.get_records("call"), *caplog.records]
        if r.name.startswith(("aiohttp", "chat.bridge", "asyncio"))
    ]
    loud = [r for r in ours if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [(r.name, r.getMessage()) for r in loud]
    bridge = [e for e in logs if e["module"] in BRIDGE_MODULES]
    noisy = [e for e in bridge if e["log_level"] in ("error", "critical") or "exc_info" in e]
    assert not noisy, noisy


async def stored(mongo: Mongo, platform_message_id: str) -> list[c.Message]:
    cursor = mongo["chat"]["messages"].find(
        {"tenant_id": "acme", "platform_message_id": platform_message_id}
    )
    return [c.Message.FromString(document["pb"]) async for document in cursor]


async def metrics(bridge: Bridge) -> str:
    async with bridge.http.get(bridge.url + "/metrics") as response:
        return await response.text()


def signed_meta(body: bytes, secret: str) -> dict[str, str]:
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": signature}


async def send_raw_json(
    bridge: Bridge, route: str, body: bytes, teams_keys: TeamsKeys
) -> tuple[int, str]:
    """``body`` correctly signed (or authorized) for ``route``."""
    if route == "whatsapp":
        return await bridge.post(
            "/webhooks/whatsapp/acme", body, signed_meta(body, WHATSAPP_SECRET)
        )
    if route == "messenger":
        return await bridge.post(
            "/webhooks/messenger/acme", body, signed_meta(body, MESSENGER_SECRET)
        )
    if route == "slack":
        return await bridge.slack("/webhooks/slack/acme", body)
    if route == "slack-interactivity":
        form = urllib.parse.urlencode({"payload": body.decode()}).encode()
        return await bridge.slack(
            "/webhooks/slack/acme/interactivity", form, "application/x-www-form-urlencoded"
        )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {teams_keys.token()}"}
    return await bridge.post("/webhooks/teams/acme", body, headers)


ROUTES = [
    ("whatsapp", "whatsapp"),
    ("messenger", "messenger"),
    ("slack", "slack"),
    ("slack-interactivity", "slack"),
    ("teams", "teams"),
]


async def test_deeply_nested_json_is_acknowledged_and_counted_on_every_route(
    bridge: Bridge, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    # Deeper than Python's parser goes (a RecursionError, once a 500), and deeper than the
    # bridge takes (64 levels) but parseable, inside a body of the platform's shape.
    too_deep_to_parse = b"[" * 5000 + b"]" * 5000
    nested: Any = {"text": "hi"}
    for _ in range(200):
        nested = {"a": [nested]}
    for route, platform in ROUTES:
        for body in (too_deep_to_parse, json.dumps({"type": "message", "x": nested}).encode()):
            status, answer = await send_raw_json(bridge, route, body, teams_keys)
            assert status == 200, (route, status, answer)
            assert json.loads(answer) == {"received": 0, "ignored": 0, "rejected": 1}, route
        assert f'chat_bridge_rejected_total{{platform="{platform}",reason="too-deep"}}' in (
            await metrics(bridge)
        ), route
    warnings = [e for e in quiet if e["event"] == "webhook rejected"]
    assert len(warnings) == 2 * len(ROUTES)  # once per request
    assert all(e["log_level"] == "warning" and e["reasons"] == ["too-deep"] for e in warnings)


def escaped(value: Any) -> bytes:
    """JSON as the platforms write it: non-ASCII (and a lone surrogate) as \\u escapes."""
    return json.dumps(value, ensure_ascii=True).encode()


async def test_lone_surrogates_on_meta_become_replacement_characters_and_are_kept(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    broken = "caf\ud800 \udfff!"
    expected = "caf\ufffd \ufffd!"
    # WhatsApp: in the text, the sender's name and a caption; a second message in the batch.
    original = sample("whatsapp", "webhook_text_message.json")
    wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    payload, [first] = unique(original, wamid)
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"][0]["text"]["body"] = broken
    value["contacts"][0]["profile"]["name"] = broken
    second, [second_id] = unique(value["messages"][0], first)
    second["text"]["body"] = "fine"
    value["messages"].append(second)
    status, _ = await send_raw_json(bridge, "whatsapp", escaped(payload), teams_keys)
    assert status == 200
    [message] = await stored(mongo, first)
    assert message.content.text.text == expected
    [message] = await stored(mongo, second_id)
    assert message.content.text.text == "fine"
    # A surrogate as raw UTF-8 bytes (ED A0 80): Python's JSON parser decodes bytes with
    # surrogatepass, so it is a lone surrogate too.
    raw, [third] = unique(original, wamid)
    raw["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "caf@"
    body = json.dumps(raw).encode().replace(b"caf@", b"caf\xed\xa0\x80")
    status, _ = await send_raw_json(bridge, "whatsapp", body, teams_keys)
    assert status == 200
    [message] = await stored(mongo, third)
    assert message.content.text.text == "caf\ufffd"
    # Messenger: in the text and in an id.
    item, [mid] = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    item["message"]["text"] = broken
    item["message"]["reply_to"]["mid"] = broken
    messenger = {"object": "page", "entry": [{"id": "PAGE", "messaging": [item]}]}
    status, _ = await send_raw_json(bridge, "messenger", escaped(messenger), teams_keys)
    assert status == 200
    [message] = await stored(mongo, mid)
    assert message.content.text.text == expected
    assert not [e for e in quiet if e["event"] == "webhook rejected"]


async def test_lone_surrogates_on_slack_and_teams(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    broken = "caf\ud800 \udfff!"
    expected = "caf\ufffd \ufffd!"
    # Slack: an event and a block action.
    event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
    event["event"]["text"] = broken
    event["event"]["ts"] = f"{time.time():.6f}"
    status, _ = await send_raw_json(bridge, "slack", escaped(event), teams_keys)
    assert status == 200
    [message] = await stored(mongo, event["event"]["ts"])
    assert message.content.text.text == expected
    click = sample("slack", "interactivity_block_actions_button.json")
    click["trigger_id"] = uuid.uuid4().hex
    click["actions"][0]["value"] = broken
    click["actions"][0]["text"]["text"] = broken
    status, _ = await send_raw_json(bridge, "slack-interactivity", escaped(click), teams_keys)
    assert status == 200
    document = await mongo["chat"]["messages"].find_one(
        {"tenant_id": "acme", "platform_message_id": {"$regex": click["trigger_id"]}}
    )
    assert document is not None
    reply = c.Message.FromString(document["pb"]).content.interactive_reply
    assert (reply.selected_id, reply.title) == (expected, expected)
    # Teams: in the text and the sender's name.
    activity, [activity_id] = unique(
        sample("teams", "activity_message_text_personal.json"), "1485983408511"
    )
    activity["text"] = broken
    activity["from"]["name"] = broken
    activity["serviceUrl"] = SERVICE_URL
    status, _ = await send_raw_json(bridge, "teams", escaped(activity), teams_keys)
    assert status == 200
    [message] = await stored(mongo, activity_id)
    assert message.content.text.text == expected
    assert not [e for e in quiet if e["event"] == "webhook rejected"]


ODD_NUMBERS: list[Any] = [
    int("9" * 400),
    -int("9" * 400),
    1e308,
    "1e400",
    "NaN",
    "12:00",
    None,
    True,
    [1],
    {"ms": 1},
    "",
]


async def test_odd_times_and_numbers_on_meta_leave_the_time_unset(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    # Messenger: one batch with a message per odd timestamp, an odd delivery watermark, and a
    # good message: every message is stored.
    base, _ = unique(
        sample("messenger", "event_message_reply_to.json"), "m_1457764197618:41d102a3e1ae206a38"
    )
    items, mids = [], []
    for odd in [*ODD_NUMBERS, int(time.time() * 1000)]:
        item, [mid] = unique(base, base["message"]["mid"])
        item["timestamp"] = odd
        items.append(item)
        mids.append(mid)
    deliveries = sample("messenger", "event_message_deliveries.json")
    for odd in ODD_NUMBERS:
        receipt = json.loads(json.dumps(deliveries))
        receipt["delivery"]["watermark"] = odd
        receipt["timestamp"] = odd
        items.append(receipt)
    # NaN and infinities as the JSON extensions Python's parser takes.
    raw = json.dumps({"object": "page", "entry": [{"id": "PAGE", "messaging": items}]})
    raw = raw.replace('"timestamp": 1e+308', '"timestamp": Infinity')
    status, answer = await send_raw_json(bridge, "messenger", raw.encode(), teams_keys)
    assert status == 200, answer
    for mid in mids:
        [message] = await stored(mongo, mid)
        assert message.content.text.text == "hello, world!"
    # WhatsApp: odd message and status timestamps, an odd error code, odd coordinates.
    original = sample("whatsapp", "webhook_text_message.json")
    wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    payload, _ = unique(original, wamid)
    value = payload["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    value["messages"], wamids = [], []
    for odd in ODD_NUMBERS:
        message, [fresh] = unique(template, template["id"])
        message["timestamp"] = odd
        value["messages"].append(message)
        wamids.append(fresh)
    failed = sample("whatsapp", "webhook_status_failed_131049.json")
    status_item = failed["entry"][0]["changes"][0]["value"]["statuses"][0]
    value["statuses"] = []
    for odd in ODD_NUMBERS:
        odd_status = json.loads(json.dumps(status_item))
        odd_status["timestamp"] = odd
        odd_status["errors"][0]["code"] = odd
        value["statuses"].append(odd_status)
    status, answer = await send_raw_json(bridge, "whatsapp", escaped(payload), teams_keys)
    assert status == 200, answer
    for fresh in wamids:
        assert len(await stored(mongo, fresh)) == 1


async def test_odd_times_and_numbers_on_slack_and_teams(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    # Slack: odd event_time and ts; odd action_ts.
    for odd in ODD_NUMBERS:
        event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
        event["event_time"] = odd
        event["event"]["ts"] = odd
        status, answer = await send_raw_json(bridge, "slack", escaped(event), teams_keys)
        assert status == 200, (odd, answer)
        click = sample("slack", "interactivity_block_actions_button.json")
        click["trigger_id"] = uuid.uuid4().hex
        click["actions"][0]["action_ts"] = odd
        status, answer = await send_raw_json(
            bridge, "slack-interactivity", escaped(click), teams_keys
        )
        assert status == 200, (odd, answer)
    # Teams: odd timestamps, and values of the wrong type where strings and objects belong.
    for odd in [*ODD_NUMBERS, "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]:
        activity, [activity_id] = unique(
            sample("teams", "activity_message_text_personal.json"), "1485983408511"
        )
        activity["serviceUrl"] = SERVICE_URL
        activity["timestamp"] = odd
        activity["replyToId"] = odd
        activity["recipient"] = [odd]
        activity["attachments"] = odd
        status, answer = await send_raw_json(bridge, "teams", escaped(activity), teams_keys)
        assert status == 200, (odd, answer)
        assert len(await stored(mongo, activity_id)) == 1, odd


async def test_a_bad_entry_is_dropped_and_the_rest_of_the_batch_stored(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    original = sample("whatsapp", "webhook_text_message.json")
    wamid = original["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    payload, [good] = unique(original, wamid)
    value = payload["entry"][0]["changes"][0]["value"]
    # Coordinates that are no numbers: the server rejects that event alone.
    location, [nowhere] = unique(sample("whatsapp", "webhook_location_message.json"), wamid)
    place = location["entry"][0]["changes"][0]["value"]["messages"][0]
    place["location"]["latitude"] = "north"
    value["messages"] += [place, "not an object", None, 7]
    other, [also_good] = unique(original, wamid)
    payload["entry"] += [*other["entry"], "not an entry", {"changes": "not a list"}]
    status, answer = await send_raw_json(bridge, "whatsapp", escaped(payload), teams_keys)
    assert status == 200, answer
    assert len(await stored(mongo, good)) == 1
    assert len(await stored(mongo, also_good)) == 1
    assert await stored(mongo, nowhere) == []
    assert 'chat_bridge_events_total{outcome="rejected",platform="whatsapp"} 1.0' in (
        await metrics(bridge)
    )
    assert [e["log_level"] for e in quiet if e["event"] == "event rejected by the server"] == [
        "warning"
    ]


async def test_signed_bodies_of_the_wrong_kind_are_acknowledged_and_counted(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    cases: list[tuple[str, bytes, str]] = [
        ("whatsapp", b"[1, 2]", "not-platform-shape"),
        ("whatsapp", b'{"object": "whatsapp_business_account", ', "malformed-json"),
        ("whatsapp", b'"\xff\xfe"', "malformed-json"),
        ("whatsapp", b"1" * 5000, "malformed-json"),  # past Python's 4300 digits
        ("messenger", b"null", "not-platform-shape"),
        ("slack", b"true", "not-platform-shape"),
        ("slack-interactivity", b'{"type": "block_actions"}', "not-platform-shape"),
        ("slack-interactivity", b"{", "malformed-json"),
        ("teams", b"[]", "not-platform-shape"),
        (
            "teams",
            json.dumps({"type": 5, "serviceUrl": SERVICE_URL, "channelId": "msteams"}).encode(),
            "not-platform-shape",
        ),
    ]
    for route, body, reason in cases:
        status, answer = await send_raw_json(bridge, route, body, teams_keys)
        assert status == 200, (route, body, answer)
        assert json.loads(answer)["rejected"] == 1, (route, body)
        rejected = [e for e in quiet if e["event"] == "webhook rejected"]
        assert rejected[-1]["reasons"] == [reason], (route, body)
    # A Slack interactivity body without its payload field, or not a form.
    for form, content_type, reason in (
        (b"other=1", "application/x-www-form-urlencoded", "malformed-form"),
        (b"payload=%7B%7D&&&", "application/x-www-form-urlencoded", "malformed-form"),
        (b"payload=%FF", "application/x-www-form-urlencoded", "malformed-json"),
        (b'{"payload": {}}', "application/json", "content-type"),
    ):
        status, answer = await bridge.slack(
            "/webhooks/slack/acme/interactivity", form, content_type
        )
        assert status == 200, (form, answer)
        assert [e for e in quiet if e["event"] == "webhook rejected"][-1]["reasons"] == [reason]
    page = await metrics(bridge)
    assert 'chat_bridge_rejected_total{platform="whatsapp",reason="malformed-json"} 3.0' in page
    assert 'chat_bridge_rejected_total{platform="slack",reason="malformed-form"} 2.0' in page
    assert 'chat_bridge_webhooks_total{platform="teams",status="200"} 2.0' in page


async def test_a_message_of_thousands_of_parts_is_rejected_whole(
    bridge: Bridge, mongo: Mongo, teams_keys: TeamsKeys, quiet: Logs
) -> None:
    """Three thousand files of ``{}`` (9 KB) were three thousand events for the server: past
    the forwarder's 2 s when the server was busy, a 503, retried by Slack to the same end."""
    event, _ = unique(sample("slack", "event_message_text.json"), "Ev111")
    event["event"]["ts"] = f"{time.time():.6f}"
    event["event"]["files"] = [{}] * 3000
    status, answer = await send_raw_json(bridge, "slack", escaped(event), teams_keys)
    assert status == 200, answer
    assert json.loads(answer) == {"received": 0, "ignored": 0, "rejected": 1}
    assert await stored(mongo, event["event"]["ts"]) == []
    assert 'chat_bridge_rejected_total{platform="slack",reason="message:too-many-parts"} 1.0' in (
        await metrics(bridge)
    )
