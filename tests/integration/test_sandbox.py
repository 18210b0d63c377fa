"""Round trips through the platform sandbox, as `make run` wires it: a user's message posted
as the platform's signed webhook, the bot's reply sent to the sandbox's API, the platform's
receipts posted back until the reply is READ (Slack has none: SENT), a choice clicked, an
image sent; and the fault buttons' effects on the delivery path."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from chat.v1 import common_pb2 as c
from chat.v1 import delivery_service_pb2 as delivery
from chat.v1 import delivery_service_pb2_grpc
from devstack.sandbox import Sandbox
from devstack.sandbox.chats import Entry
from devstack.sandbox.media import sample_png
from devstack.sandbox.page import send_as
from devstack.sandbox.personas import Persona
from devstack.tokens import mint_dev_token
from tests.support.bridge import Bridge
from tests.support.chat_client import SECRET
from tests.support.servers import RunningServer
from tests.support.stand_ins import (
    SANDBOX_TENANT,
    DeliveryStack,
    Mongo,
    reply_of,
    status_of,
)
from tests.support.waiting import eventually

Stack = tuple[RunningServer, Bridge, Sandbox]
PLATFORMS = ("whatsapp", "messenger", "slack", "teams")


def fresh_user(platform: str) -> Persona:
    """A user of the test's own (sessions live in the shared Redis)."""
    tag = uuid.uuid4().hex[:10]
    number = str(uuid.uuid4().int)[:10]
    return {
        "whatsapp": Persona("t", "Test User", f"1650{number}", f"1650{number}"),
        "messenger": Persona("t", "Test User", f"71{number}", f"71{number}"),
        "slack": Persona("t", "Test User", f"U{tag.upper()}", f"D{tag.upper()}"),
        "teams": Persona("t", "Test User", f"29:{tag}", f"a:{tag}"),
    }[platform]


@contextlib.asynccontextmanager
async def connected(
    delivery_stack: DeliveryStack, sandbox: Sandbox, **overrides: str
) -> AsyncIterator[Stack]:
    async with delivery_stack(CHAT_MEDIA_FETCH_ALLOW_PRIVATE="true", **overrides) as running:
        server, bridge = running
        sandbox.state.receipt_delay = 0.05
        sandbox.connect(bridge.url, SANDBOX_TENANT)
        yield server, bridge, sandbox


def chat(sandbox: Sandbox, platform: str, user: Persona) -> list[Entry]:
    return sandbox.state.chats.entries.get(f"{platform}:{user.address}", [])


async def bot_says(
    sandbox: Sandbox, platform: str, user: Persona, matches: Callable[[Entry], bool]
) -> Entry:
    """The bot's message in the user's chat that ``matches``, once the sandbox has it."""
    found: list[Entry] = []

    async def arrived() -> bool:
        found[:] = [e for e in chat(sandbox, platform, user) if e.sender == "bot" and matches(e)]
        return bool(found)

    await eventually(arrived, f"the bot's message on {platform}")
    return found[0]


def text_of(entry: Entry) -> str:
    return str((entry.view or {}).get("text", ""))


async def until_status(mongo: Mongo, message_id: str, status: int, what: str) -> None:
    async def reached() -> bool:
        return await status_of(mongo, message_id) == status

    await eventually(reached, what)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_user_chats_through_the_sandbox(
    delivery_stack: DeliveryStack, platforms: Sandbox, delivery_mongo: Mongo, platform: str
) -> None:
    user = fresh_user(platform)
    async with connected(delivery_stack, platforms) as (_, _, sandbox):
        assert await send_as(sandbox.state, platform, user, text="help") == 200
        [said] = [e for e in chat(sandbox, platform, user) if e.sender == "user"]
        menu = await bot_says(sandbox, platform, user, lambda e: bool(e.view and e.view["choices"]))
        titles = [choice["title"] for choice in menu.view["choices"]] if menu.view else []
        assert titles == ["My orders", "Billing", "Talk to a person"]

        # The platform's receipts (signed webhooks) move the stored reply to READ; Slack has
        # no receipts, so its reply stays SENT.
        reply = await reply_of(delivery_mongo, said.platform_id)
        final = c.DELIVERY_STATUS_SENT if platform == "slack" else c.DELIVERY_STATUS_READ
        await until_status(delivery_mongo, reply.id, final, f"the reply's status on {platform}")
        # The bridge has the receipt before the sandbox marks its own chat: wait for both.
        ticks = "sent" if platform == "slack" else "read"

        async def ticked() -> bool:
            return menu.status == ticks

        await eventually(ticked, f"the reply's ticks on {platform}")

        # A click on the reply's button goes back as the platform's own interaction.
        billing = next(choice for choice in menu.view["choices"] if choice["title"] == "Billing")
        choice = {**billing, "reply_to": menu.platform_id}
        assert await send_as(sandbox.state, platform, user, choice=choice) == 200
        await bot_says(sandbox, platform, user, lambda e: text_of(e) == "You chose Billing.")

        # An image: fetched from the sandbox the platform's way, checked and stored.
        image = sandbox.state.media.put(sample_png(), "image/png", "photo.png")
        assert await send_as(sandbox.state, platform, user, media=image) == 200
        sent_image = chat(sandbox, platform, user)[-1]
        assert sent_image.image == f"/media/{image.media_id}"

        async def stored() -> bool:
            document = await delivery_mongo["messages"].find_one(
                {"platform_message_id": sent_image.platform_id}
            )
            if document is None:
                return False
            media = c.Message.FromString(document["pb"]).content.media
            return media.WhichOneof("source") == "media_id" and media.mime_type == "image/png"

        await eventually(stored, f"the image stored from {platform}")


async def retried_dead_letter(server: RunningServer, reply: c.Message, channel: int) -> str:
    """The reply's failed delivery as an operator finds it (its error code), then sent again
    with RetryDelivery."""
    admin = mint_dev_token(secret=SECRET, tenant_id="acme", scopes=("chat:admin",))
    metadata = (("authorization", f"Bearer {admin}"),)
    async with grpc.aio.insecure_channel(server.target) as grpc_channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(grpc_channel)
        listed = await stub.ListFailedDeliveries(
            delivery.ListFailedDeliveriesRequest(channel=c.ChannelType.ValueType(channel)),
            metadata=metadata,
        )
        [failed] = [d for d in listed.deliveries if d.message_id == reply.id]
        await stub.RetryDelivery(
            delivery.RetryDeliveryRequest(message_id=reply.id), metadata=metadata
        )
    return failed.last_error.code


async def arm(sandbox: Sandbox, fault: str, platform: str = "whatsapp") -> None:
    """As the page's fault button does."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.base}/sandbox/faults", json={"platform": platform, "fault": fault}
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["faults"] == {platform: fault}


async def hello(
    sandbox: Sandbox, mongo: Mongo, user: Persona, platform: str = "whatsapp"
) -> c.Message:
    assert await send_as(sandbox.state, platform, user, text="hello") == 200
    [said] = [e for e in chat(sandbox, platform, user) if e.sender == "user"]
    return await reply_of(mongo, said.platform_id)


def sends_to(sandbox: Sandbox, platform: str, user: Persona) -> list[tuple[int, Any]]:
    """The (status, answer) of each message send to the user, as the panel shows them."""
    return [
        (x.status, x.answer)
        for x in sandbox.recorder.exchanges
        if x.direction == "to platform"
        and x.platform == platform
        and isinstance(x.body, dict)
        and user.address in json.dumps(x.body)
        and "status" not in x.body  # not a mark-read
    ]


#: (fault, platform, the first send's status, its error code): Meta throttles with a Graph
#: error and a 400 (no Retry-After: the service backs off); Slack and Teams with 429 and
#: Retry-After.
TRANSIENT = [
    ("rate_limit", "whatsapp", 400, 130429),
    ("rate_limit", "slack", 429, "ratelimited"),
    ("server_error", "whatsapp", 503, 2),
    ("timeout", "whatsapp", 504, None),
]


@pytest.mark.parametrize(("fault", "platform", "status", "code"), TRANSIENT)
async def test_a_transient_fault_is_retried_until_the_reply_is_read(
    delivery_stack: DeliveryStack,
    platforms: Sandbox,
    delivery_mongo: Mongo,
    fault: str,
    platform: str,
    status: int,
    code: Any,
) -> None:
    user = fresh_user(platform)
    platforms.faults.retry_after_seconds = 1
    platforms.faults.timeout_seconds = 1.0
    async with connected(delivery_stack, platforms, CHAT_DELIVERY_SEND_TIMEOUT_MS="400") as (
        _,
        _,
        sandbox,
    ):
        await arm(sandbox, fault, platform)
        reply = await hello(sandbox, delivery_mongo, user, platform)
        final = c.DELIVERY_STATUS_SENT if platform == "slack" else c.DELIVERY_STATUS_READ
        await until_status(delivery_mongo, reply.id, final, "the retried reply")
        assert sandbox.faults.armed == {}  # one send took the fault
        assert len(sandbox.to(platform, user.address)) == 2
        if platform == "slack":
            first, second = sandbox.times_to(platform, user.address)
            assert second - first >= 1.0  # the Retry-After was honoured
        # The panel records an exchange when its answer ends: a send that timed out may end
        # after its retry (the sandbox still answers it, late), so they are matched by status.
        sends = sends_to(sandbox, platform, user)
        assert sorted(answered for answered, _ in sends) == sorted([status, 200])
        [answer] = [answer for answered, answer in sends if answered == status]
        if platform == "slack":
            assert answer["error"] == code
        elif code is not None:
            assert answer["error"]["code"] == code


async def test_whatsapps_permanent_fault_is_a_failed_status_then_a_dead_letter_until_retried(
    delivery_stack: DeliveryStack, platforms: Sandbox, delivery_mongo: Mongo
) -> None:
    user = fresh_user("whatsapp")
    async with connected(delivery_stack, platforms) as (server, _, sandbox):
        await arm(sandbox, "permanent")
        reply = await hello(sandbox, delivery_mongo, user)
        # As WhatsApp does: the send is accepted (200, a wamid), then a "failed" status
        # webhook carries 131026; the service moves the message to FAILED.
        await until_status(delivery_mongo, reply.id, c.DELIVERY_STATUS_FAILED, "the failed status")
        assert [status for status, _ in sends_to(sandbox, "whatsapp", user)] == [200]

        def failed_hooks() -> list[Any]:
            return [
                x
                for x in sandbox.recorder.exchanges
                if x.direction == "to bridge"
                and '"failed"' in json.dumps(x.body)
                and user.address in json.dumps(x.body)
            ]

        async def answered() -> bool:
            return bool(failed_hooks())

        # The panel records the webhook once the bridge's answer is back, which may be just
        # after the server committed the status the test saw.
        await eventually(answered, "the answer to the failed status webhook")
        [hook] = failed_hooks()
        [status] = hook.body["entry"][0]["changes"][0]["value"]["statuses"]
        assert status["errors"][0]["code"] == 131026
        assert hook.status == 200
        assert [e.text for e in chat(sandbox, "whatsapp", user) if e.sender == "note"] == [
            "the platform reported the send failed: 131026"
        ]
        assert len(sandbox.to("whatsapp", user.address)) == 1  # not sent again

        # Reported failed, the delivery is a dead letter like a refused send: listed with the
        # report's error, and RetryDelivery sends it again.
        assert await retried_dead_letter(server, reply, c.CHANNEL_TYPE_WHATSAPP) == "131026"
        await until_status(delivery_mongo, reply.id, c.DELIVERY_STATUS_READ, "the retried reply")
        assert len(sandbox.to("whatsapp", user.address)) == 2


async def test_a_permanent_refusal_is_a_dead_letter_until_retried(
    delivery_stack: DeliveryStack, platforms: Sandbox, delivery_mongo: Mongo
) -> None:
    user = fresh_user("messenger")
    async with connected(delivery_stack, platforms) as (server, _, sandbox):
        await arm(sandbox, "permanent", "messenger")
        reply = await hello(sandbox, delivery_mongo, user, "messenger")
        await until_status(delivery_mongo, reply.id, c.DELIVERY_STATUS_FAILED, "the dead letter")
        assert len(sandbox.to("messenger", user.address)) == 1  # not retried
        assert [e.text for e in chat(sandbox, "messenger", user) if e.sender == "note"] == [
            "the send was answered 400"
        ]

        assert await retried_dead_letter(server, reply, c.CHANNEL_TYPE_MESSENGER) == "100"
        await until_status(delivery_mongo, reply.id, c.DELIVERY_STATUS_READ, "the retried reply")
        await bot_says(sandbox, "messenger", user, lambda e: e.status == "read")


async def test_the_page_refuses_bad_input_with_a_reason(platforms: Sandbox) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("/sandbox/faults", {"platform": "whatsapp", "fault": "meteor"}, "unknown fault"),
        ("/sandbox/faults", {"platform": "fax", "fault": "timeout"}, "unknown platform"),
        ("/sandbox/faults", ["not", "an", "object"], "a JSON object is expected"),
        ("/sandbox/send", {"platform": "whatsapp", "user": "zed", "text": "hi"}, "unknown user"),
        ("/sandbox/send", {"platform": "whatsapp", "user": "ana"}, "say something"),
        (
            "/sandbox/send",
            {"platform": "slack", "user": "ana", "image": {"type": "text/plain", "data": ""}},
            "not an image",
        ),
        ("/sandbox/send", {"platform": "teams", "user": "ana", "choice": {"id": "x"}}, "a choice"),
    ]
    async with aiohttp.ClientSession() as http:
        for path, body, reason in cases:
            async with http.post(platforms.base + path, json=body) as response:
                assert response.status == 400, (path, body)
                assert reason in (await response.json())["error"]
        # Not connected to a bridge: nothing to send to, said so.
        ok = {"platform": "whatsapp", "user": "ana", "text": "hi"}
        async with http.post(platforms.base + "/sandbox/send", json=ok) as response:
            assert response.status == 409
            assert "no bridge" in (await response.json())["error"]
