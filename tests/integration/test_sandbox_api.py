"""The sandbox's own HTTP surface, without a service: the page serves only its files to a
local Host and takes only JSON; the panel hides credentials; each platform's API takes what
the platform documents and refuses, in its own words, what the platform refuses; the
webhooks are compact and a silent bridge is a 504 with a reason."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from devstack.processes import free_port
from devstack.sandbox import Sandbox, core, page, whatsapp
from devstack.sandbox.core import Bridge, State, TenantSecrets, compact
from devstack.sandbox.page import send_as
from devstack.sandbox.personas import Persona
from tests.support.bridge import FIXTURES
from tests.support.stand_ins import SANDBOX_TENANT

JSON = {"Content-Type": "application/json"}
PLATFORMS = ("whatsapp", "messenger", "slack", "teams")


async def test_the_page_serves_its_own_two_files_and_nothing_else(
    platforms: Sandbox, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.js"
    outside.write_text("secret")
    climbs = [
        f"/static/{quote(str(outside), safe='')}",  # an absolute name, %2F decoded into it
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/..%2Fpage.py",
        "/static/index.html",
    ]
    async with aiohttp.ClientSession() as http:
        for path in climbs:
            async with http.get(platforms.base + path) as response:
                assert response.status == 404, path
                assert "secret" not in await response.text()
        for name, kind in (("sandbox.js", "text/javascript"), ("sandbox.css", "text/css")):
            async with http.get(f"{platforms.base}/static/{name}") as response:
                assert response.status == 200
                assert response.content_type == kind


async def test_the_page_refuses_a_foreign_host_and_a_post_that_is_not_json(
    platforms: Sandbox,
) -> None:
    fault = {"platform": "whatsapp", "fault": "timeout"}
    async with aiohttp.ClientSession() as http:
        # What a page of another site can make a browser send without asking (CSRF).
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            async with http.post(
                platforms.base + "/sandbox/faults",
                data=json.dumps(fault),
                headers={"Content-Type": content_type},
            ) as response:
                assert response.status == 415
                assert "application/json" in (await response.json())["error"]
        # A name rebound to 127.0.0.1 still arrives with its own Host.
        for path in ("/", "/sandbox/state", "/static/sandbox.js"):
            async with http.get(
                platforms.base + path, headers={"Host": "evil.example:8090"}
            ) as response:
                assert response.status == 421, path
                assert "evil.example" in (await response.json())["error"]
        async with http.post(
            platforms.base + "/sandbox/faults", json=fault, headers={"Host": "evil.example"}
        ) as response:
            assert response.status == 421
        async with http.post(
            platforms.base + "/sandbox/faults", data=b"{not json", headers=JSON
        ) as response:
            assert response.status == 400
            assert "not JSON" in (await response.json())["error"]
        assert platforms.faults.armed == {}
        # localhost with a port is the page's own.
        port = platforms.base.rsplit(":", 1)[1]
        async with http.get(
            platforms.base + "/sandbox/state", headers={"Host": f"localhost:{port}"}
        ) as response:
            assert response.status == 200


async def test_the_panel_never_shows_a_secret_or_a_token(platforms: Sandbox) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "app",
        "client_secret": "the-app-password",
        "scope": "https://api.botframework.com/.default",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(platforms.base + "/token", data=form) as response:
            assert response.status == 200
            token = (await response.json())["access_token"]
        async with http.post(
            platforms.base + "/v3/conversations/a:x/activities",
            json={"type": "message", "text": "hi"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200
        async with http.get(platforms.base + "/sandbox/state") as response:
            shown = json.dumps(await response.json())
    assert "the-app-password" not in shown
    assert token not in shown
    [token_call] = [x for x in platforms.recorder.exchanges if x.path == "/token"]
    assert token_call.body["client_secret"] == "(hidden)"
    assert token_call.answer["access_token"] == "(hidden)"
    assert token_call.body["client_id"] == "app"  # the rest stays, for the integrator
    # The tests' own record keeps the request whole.
    assert platforms.sent("teams-token")[-1][2]["client_secret"] == "the-app-password"


def _json(value: Any) -> tuple[bytes, str]:
    return json.dumps(value).encode(), "application/json"


GRAPH = "/v23.0/106540352242922"
#: (platform, path, body and its type, what the platform says): each one refused in the
#: platform's own words, never a 500.
BAD_CALLS: list[tuple[str, str, tuple[bytes, str], str]] = [
    ("whatsapp", f"{GRAPH}/messages", (b"{not json", "application/json"), "not valid JSON"),
    ("whatsapp", f"{GRAPH}/messages", _json(["a", "list"]), "not a JSON object"),
    ("whatsapp", f"{GRAPH}/messages", _json("text"), "not a JSON object"),
    (
        "whatsapp",
        f"{GRAPH}/messages",
        _json({"messaging_product": "whatsapp", "to": "1", "type": "text"}),
        "the parameter text is required",
    ),
    (
        "whatsapp",
        f"{GRAPH}/messages",
        _json(
            {
                "messaging_product": "whatsapp",
                "to": "1",
                "type": "interactive",
                "interactive": {"type": "button", "action": {"buttons": [{"type": "reply"}]}},
            }
        ),
        "the message",
    ),
    ("messenger", "/v23.0/me/messages", _json({"recipient": "71", "message": {}}), "recipient"),
    ("messenger", "/v23.0/me/messages", _json([]), "not a JSON object"),
    ("slack", "/api/chat.postMessage", (b"[", "application/json"), "invalid_json"),
    (
        "slack",
        "/api/chat.postMessage",
        _json({"channel": "D1", "blocks": [{"type": "actions", "elements": [{"type": "x"}]}]}),
        "invalid_blocks",
    ),
    ("slack", "/api/chat.postMessage", _json("blocks"), "invalid_arguments"),
    (
        "teams",
        "/v3/conversations/a:x/activities",
        _json(
            {
                "type": "message",
                "attachments": [
                    {"contentType": "application/vnd.microsoft.card.adaptive", "content": "x"}
                ],
            }
        ),
        "the activity",
    ),
    ("teams", "/v3/conversations/a:x/activities", _json(7), "not a JSON object"),
]


@pytest.mark.parametrize(("platform", "path", "body", "reason"), BAD_CALLS)
async def test_bad_input_to_a_platform_api_is_the_platforms_own_refusal(
    platforms: Sandbox, platform: str, path: str, body: tuple[bytes, str], reason: str
) -> None:
    platforms.faults.arm(platform, "permanent")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            platforms.base + path,
            data=body[0],
            headers={"Content-Type": body[1], "Authorization": "Bearer t"},
        ) as response,
    ):
        answer = await response.json()
    if platform == "slack":
        assert response.status == 200
        assert answer == {"ok": False, "error": reason}
    elif platform == "teams":
        assert response.status == 400
        assert answer["error"]["code"] == "BadArgument"
        assert reason in answer["error"]["message"]
    else:
        assert response.status == 400
        assert answer["error"]["code"] == 100
        assert answer["error"]["type"] == "OAuthException"
        assert reason.lower() in answer["error"]["message"].lower()
    assert platforms.faults.armed == {platform: "permanent"}  # a refused call takes no fault
    [shown] = [x for x in platforms.recorder.exchanges if x.path == path]
    assert shown.status == response.status
    assert shown.answer == answer


async def test_uploads_the_platform_refuses_are_refused_its_way(platforms: Sandbox) -> None:
    big = aiohttp.FormData()
    big.add_field("messaging_product", "whatsapp")
    big.add_field("type", "image/png")
    big.add_field(
        "file",
        io.BytesIO(b"x" * (5 * 1024 * 1024 + 1)),
        filename="big.png",
        content_type="image/png",
    )
    odd = aiohttp.FormData()
    odd.add_field("message", "{not json")
    odd.add_field("filedata", io.BytesIO(b"png"), filename="a.png", content_type="image/png")
    async with aiohttp.ClientSession() as http:
        for path, form, reason in (
            (f"{GRAPH}/media", big, "the file"),
            ("/v23.0/me/message_attachments", odd, "message"),
        ):
            async with http.post(
                platforms.base + path, data=form, headers={"Authorization": "Bearer t"}
            ) as response:
                assert response.status == 400, path
                error = (await response.json())["error"]
                assert error["code"] == 100
                assert reason in error["message"]


PAGE = SANDBOX_TENANT.page_id
#: Where each platform's documented sample requests go (the sandbox plays the test tenant).
SAMPLE_PATHS = {
    "whatsapp": [f"/v23.0/{SANDBOX_TENANT.phone_number_id}/messages"],
    "messenger": ["/v23.0/me/messages", f"/v23.0/{PAGE}/messages"],
    "slack": ["/api/chat.postMessage"],
    "teams": ["/v3/conversations/a:sample/activities"],
}
TOKENS = {"whatsapp": "t", "messenger": "t", "slack": "xoxb-t", "teams": "bf-token"}


def outbound_samples() -> list[tuple[str, str]]:
    return [
        (platform, sample.name)
        for platform in PLATFORMS
        for sample in sorted((FIXTURES / platform / "outbound").glob("*.request.json"))
    ]


async def post_json(
    sandbox: Sandbox, path: str, body: Any, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(sandbox.base + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(("platform", "name"), outbound_samples())
async def test_the_platforms_documented_sends_are_accepted(
    platforms: Sandbox, platform: str, name: str
) -> None:
    platforms.connect("http://127.0.0.1:9", SANDBOX_TENANT)  # the tenant's ids and tokens
    body = json.loads((FIXTURES / platform / "outbound" / name).read_text())
    for path in SAMPLE_PATHS[platform]:
        status, answer = await post_json(platforms, path, body, TOKENS[platform])
        assert status == 200, (path, answer)
        assert answer.get("ok", True) is True, answer
        if platform == "messenger":
            assert platforms.sent("messenger")  # recorded as Messenger, not WhatsApp
            assert "messaging_product" not in answer
    assert not platforms.sent("whatsapp") or platform == "whatsapp"


WA = f"/v23.0/{SANDBOX_TENANT.phone_number_id}/messages"
WA_TEXT = {"messaging_product": "whatsapp", "to": "15550100001", "type": "text"}


def _buttons(count: int, title: str = "Yes") -> dict[str, Any]:
    buttons = [{"type": "reply", "reply": {"id": f"b{n}", "title": title}} for n in range(count)]
    return {
        **WA_TEXT,
        "type": "interactive",
        "interactive": {"type": "button", "body": {"text": "?"}, "action": {"buttons": buttons}},
    }


#: (platform, path, body, token, what the platform answers): each a send the platform refuses.
VIOLATIONS: list[tuple[str, str, Any, str | None, str]] = [
    ("whatsapp", WA, {**WA_TEXT, "text": {"body": "x" * 4097}}, "t", "4096"),
    ("whatsapp", WA, {**WA_TEXT, "text": {"body": "hi"}}, None, "access token"),
    ("whatsapp", WA, {**WA_TEXT, "text": {"body": "hi"}}, "nope", "Invalid OAuth"),
    ("whatsapp", "/v23.0/999/messages", {**WA_TEXT, "text": {"body": "hi"}}, "t", "'999'"),
    ("whatsapp", WA, {"to": "1", "type": "text", "text": {"body": "hi"}}, "t", "messaging_product"),
    ("whatsapp", WA, _buttons(4), "t", "1 to 3"),
    ("whatsapp", WA, _buttons(1, "x" * 21), "t", "title"),
    ("whatsapp", WA, {"messaging_product": "whatsapp", "status": "read"}, "t", "message_id"),
    (
        "messenger",
        "/v23.0/me/messages",
        {"recipient": {"id": "71"}, "message": {"text": "x" * 2001}},
        "t",
        "2000",
    ),
    (
        "messenger",
        "/v23.0/me/messages",
        {
            "recipient": {"id": "71"},
            "message": {
                "text": "?",
                "quick_replies": [
                    {"content_type": "text", "title": str(n), "payload": str(n)} for n in range(14)
                ],
            },
        },
        "t",
        "13",
    ),
    ("messenger", "/v23.0/me/messages", {"recipient": {"id": "71"}, "message": {}}, "t", "text"),
    (
        "messenger",
        "/v23.0/me/messages",
        {"recipient": {"id": "71"}, "sender_action": "x"},
        "t",
        "sender_action",
    ),
    (
        "messenger",
        "/v23.0/me/messages",
        {"recipient": {"id": "71"}, "message": {"text": "a"}},
        None,
        "access token",
    ),
    ("whatsapp", WA, {**WA_TEXT, "type": ["text"]}, "t", "malformed"),
    (
        "whatsapp",
        WA,
        {**_buttons(1), "interactive": {"type": "button", "action": {"buttons": [7]}}},
        "t",
        "the message",
    ),
    (
        "messenger",
        "/v23.0/me/messages",
        {"recipient": {"id": "71"}, "message": {"attachment": {"payload": {"buttons": ["x"]}}}},
        "t",
        "[type] is required",
    ),
    (
        "messenger",
        "/v23.0/me/messages",
        {
            "recipient": {"id": "71"},
            "message": {"attachment": {"type": "template", "payload": {"buttons": ["x"]}}},
        },
        "t",
        "must be an object",
    ),
    ("slack", "/api/chat.postMessage", {"channel": "D1", "text": "hi"}, None, "not_authed"),
    (
        "slack",
        "/api/chat.postMessage",
        {"channel": "D1", "text": "hi"},
        "xoxb-nope",
        "invalid_auth",
    ),
    ("slack", "/api/chat.postMessage", {"text": "hi"}, "xoxb-t", "channel_not_found"),
    ("slack", "/api/chat.postMessage", {"channel": "D1"}, "xoxb-t", "no_text"),
    (
        "teams",
        "/v3/conversations/a:x/activities",
        {"type": "message", "text": "hi"},
        None,
        "denied",
    ),
    ("teams", "/v3/conversations/a:x/activities", {"text": "hi"}, "bf", "no type"),
]


@pytest.mark.parametrize(("platform", "path", "body", "token", "reason"), VIOLATIONS)
async def test_a_send_the_platform_refuses_is_refused(
    platforms: Sandbox, platform: str, path: str, body: Any, token: str | None, reason: str
) -> None:
    platforms.connect("http://127.0.0.1:9", SANDBOX_TENANT)
    status, answer = await post_json(platforms, path, body, token)
    if platform == "slack":
        assert (status, answer) == (200, {"ok": False, "error": reason})
    else:
        assert status in (400, 401)
        assert reason in answer["error"]["message"], answer
        if platform != "teams":
            assert answer["error"]["type"] == "OAuthException"
    assert not [
        e
        for entries in platforms.state.chats.entries.values()
        for e in entries
        if e.sender == "bot"
    ]


async def test_mark_read_and_sender_actions_are_answered_as_the_platform_does(
    platforms: Sandbox,
) -> None:
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.1"}
    assert await post_json(platforms, WA, read, "t") == (200, {"success": True})
    typing = {"recipient": {"id": "71"}, "sender_action": "typing_on"}
    assert await post_json(platforms, "/v23.0/me/messages", typing, "t") == (
        200,
        {"recipient_id": "71"},
    )


async def test_the_webhooks_are_compact_json_as_meta_sends_them(platforms: Sandbox) -> None:
    seen: list[bytes] = []

    async def bridge(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/{platform}/{tenant}", bridge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        platforms.connect(f"http://127.0.0.1:{runner.addresses[0][1]}", SANDBOX_TENANT)
        ana = Persona("ana", "Ana Silva", "15550100001", "15550100001")
        assert await send_as(platforms.state, "whatsapp", ana, text="hi there") == 200
    finally:
        await runner.cleanup()
    [body] = seen
    assert b", " not in body
    assert b": " not in body
    assert json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["text"] == {
        "body": "hi there"
    }


async def test_a_bridge_that_does_not_answer_is_a_504_with_a_reason(
    platforms: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "WEBHOOK_TIMEOUT", aiohttp.ClientTimeout(total=0.3))
    monkeypatch.setattr(page, "WEBHOOK_TIMEOUT", aiohttp.ClientTimeout(total=0.3))
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/webhooks/{platform}/{tenant}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        platforms.connect(f"http://127.0.0.1:{runner.addresses[0][1]}", SANDBOX_TENANT)
        ok = {"platform": "whatsapp", "user": "ana", "text": "hi"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(platforms.base + "/sandbox/send", json=ok) as response,
        ):
            assert response.status == 504
            assert "did not answer" in (await response.json())["error"]
        # Nothing listens here at all: 502.
        platforms.connect("http://127.0.0.1:9", SANDBOX_TENANT)
        async with (
            aiohttp.ClientSession() as http,
            http.post(platforms.base + "/sandbox/send", json=ok) as response,
        ):
            assert response.status == 502
            assert "could not be reached" in (await response.json())["error"]
    finally:
        release.set()
        await runner.cleanup()


async def test_a_receipt_the_bridge_could_not_take_is_posted_again() -> None:
    """As the platforms do: a 503 (the server busy) is not the end of a receipt."""
    port = free_port()
    answers = [503, 200]
    received: list[bytes] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=answers[len(received) - 1])

    app = web.Application()
    app.router.add_post("/webhooks/whatsapp/acme", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state = State()
    try:
        async with aiohttp.ClientSession() as http:
            tenant = TenantSecrets("acme", whatsapp_secret="s3cret", phone_number_id="1555")
            state.bridge = Bridge(f"http://127.0.0.1:{port}", tenant, http)
            payload = {"object": "whatsapp_business_account", "entry": []}
            status = await state.post_receipt(functools.partial(whatsapp.post, state, payload))
    finally:
        await state.close()
        await runner.cleanup()
    assert status == 200
    assert len(received) == 2
    assert received[0] == received[1] == compact(payload)
