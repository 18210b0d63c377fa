"""The web chat gateway against a real chat server: visitor tokens, the socket's frames,
resume without gap or duplicate, resends stored once, uploads, and every limit's refusal."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import jwt
import pytest
from PIL import Image

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import chat_service_pb2_grpc
from tests.support.chat_client import JWT_SETTINGS
from tests.support.servers import RunningServer, tenants_file
from tests.support.web import (
    ORIGIN,
    SERVER_TENANTS,
    Gateway,
    start_web_bridge,
    user_hash,
    visitor_tokens,
)
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.visitors import VisitorTokens

StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    return await start_server(
        CHAT_TENANTS_FILE=tenants_file(server_dir, SERVER_TENANTS), **JWT_SETTINGS
    )


async def _gateway(
    server: RunningServer, tmp_path: Path, settings: WebSettings | None = None
) -> AsyncIterator[Gateway]:
    runner, url = await start_web_bridge(server.target, tmp_path, settings)
    async with aiohttp.ClientSession() as http:
        yield Gateway(url=url, http=http)
    await runner.cleanup()


@pytest.fixture
async def gateway(server: RunningServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for gateway in _gateway(server, tmp_path):
        yield gateway


async def history(server: RunningServer, token: str, conversation_id: str) -> list[int]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        reply = await chat_service_pb2_grpc.ChatServiceStub(channel).ListMessages(
            chat.ListMessagesRequest(conversation_id=conversation_id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )
    return [m.sequence for m in reply.messages]


async def test_a_session_mints_a_short_lived_visitor_token(gateway: Gateway) -> None:
    answer = await gateway.token()
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["scope"] == "chat:web"
    assert claims["tenant_id"] == "acme"
    assert claims["sub"] == answer["visitor_id"]
    assert answer["visitor_id"].startswith("visitor-")
    assert 0 < claims["exp"] - time.time() <= 1800
    assert answer["conversation_id"] == ""
    assert answer["last_sequence"] == 0
    # Each new session without a token is a new anonymous visitor.
    assert (await gateway.token())["visitor_id"] != answer["visitor_id"]


async def test_sessions_are_refused_with_a_reason(gateway: Gateway) -> None:
    assert await gateway.session(site_key="not-the-key") == (403, {"error": "wrong site key"})
    gateway.origin = "https://evil.example"
    status, body = await gateway.session()
    assert status == 403
    assert "origin" in body["error"]
    gateway.origin = ORIGIN + "/"  # exact: not a prefix, not a variant
    assert (await gateway.session())[0] == 403
    gateway.origin = ORIGIN
    gateway.tenant = "globex"  # no web channel
    assert (await gateway.session())[0] == 404
    gateway.tenant = "nobody"
    assert (await gateway.session())[0] == 404
    gateway.tenant = "acme"
    async with gateway.http.post(
        f"{gateway.url}/web/v1/acme/sessions", data=b"[", headers={"Origin": ORIGIN}
    ) as response:
        assert response.status == 400
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert await response.json() == {"error": "the body is not JSON"}


async def test_the_cors_preflight_answers_allowed_origins_only(gateway: Gateway) -> None:
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with gateway.http.options(
        f"{gateway.url}/web/v1/acme/sessions", headers=headers
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    headers["Origin"] = "https://evil.example"
    async with gateway.http.options(
        f"{gateway.url}/web/v1/acme/sessions", headers=headers
    ) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_logged_in_user_is_proven_by_the_identity_hash(gateway: Gateway) -> None:
    answer = await gateway.token(user_id="customer-42", user_hash=user_hash("customer-42"))
    assert answer["visitor_id"] == "customer-42"
    status, body = await gateway.session(user_id="customer-42", user_hash=user_hash("other"))
    assert (status, body) == (403, {"error": "user_hash does not match user_id"})
    status, _ = await gateway.session(user_id="customer-42", user_hash="not-hex")
    assert status == 403
    # A tenant without an identity secret has anonymous visitors only.
    gateway.tenant, gateway.origin = "initech", "https://initech.example"
    status, body = await gateway.session(
        site_key="initech-site-key", user_id="u1", user_hash=user_hash("u1")
    )
    assert status == 400
    assert "identity" in body["error"]


async def test_a_token_is_refreshed_for_the_same_visitor_before_expiry(gateway: Gateway) -> None:
    first = await gateway.token()
    again = await gateway.token(token=first["token"])
    assert again["visitor_id"] == first["visitor_id"]
    expired = VisitorTokens(
        key=visitor_tokens()._key,
        issuer=JWT_SETTINGS["CHAT_JWT_ISSUER"],
        audience=JWT_SETTINGS["CHAT_JWT_AUDIENCE"],
        lifetime_seconds=60,
        clock=lambda: time.time() - 3600,
    ).mint("acme", first["visitor_id"])
    status, body = await gateway.session(token=expired.token)
    assert status == 401
    assert "expired" in body["error"]
    other_tenant = visitor_tokens().mint("initech", first["visitor_id"])
    assert (await gateway.session(token=other_tenant.token))[0] == 401
    forged = jwt.encode(
        jwt.decode(first["token"], options={"verify_signature": False}),
        "a-wrong-secret-that-is-long-enough-for-hs256",
    )
    assert (await gateway.session(token=forged))[0] == 401


async def test_chatting_over_the_socket_and_resuming_without_gap_or_duplicate(
    gateway: Gateway, server: RunningServer
) -> None:
    session = await gateway.token()
    socket = await gateway.socket(session["token"])
    assert socket.ready["conversation_id"] == ""
    client_id = await socket.send("hello")
    ack = await socket.next("ack")
    assert ack["client_id"] == client_id
    assert ack["sequence"] == 1
    first, reply = await socket.messages_until(2)
    assert (first["sequence"], first["direction"], first["client_id"]) == (1, "in", client_id)
    assert first["content"] == {"text": {"text": "hello"}}
    assert (reply["sequence"], reply["direction"]) == (2, "out")
    assert "Hello" in reply["content"]["text"]["text"]
    # The same client id again (a resend after a lost ack): stored once, acked the same.
    await socket.send("hello", client_id=client_id)
    assert (await socket.next("ack"))["sequence"] == 1
    conversation = ack["conversation_id"]
    assert await history(server, session["token"], conversation) == [1, 2]
    await socket.ws.close()

    # A reload: the session names the conversation and its last sequence.
    reloaded = await gateway.token(token=session["token"])
    assert (reloaded["conversation_id"], reloaded["last_sequence"]) == (conversation, 2)
    # Meanwhile (socket closed) nothing is lost: resume after 1 gives exactly 2, then more.
    resumed = await gateway.socket(reloaded["token"], after_sequence=1)
    assert resumed.ready["conversation_id"] == conversation
    await resumed.send("help")
    frames = await resumed.messages_until(3)
    assert [f["sequence"] for f in frames] == [2, 3, 4]
    menu = frames[2]["content"]["interactive"]
    choices = menu["quick_replies"]["quick_replies"]
    assert [c["title"] for c in choices] == ["My orders", "Billing", "Talk to a person"]
    await resumed.send("", choice={"id": "billing", "title": "Billing"})
    frames = await resumed.messages_until(5)
    assert frames[3]["content"]["interactive_reply"]["selected_id"] == "billing"
    assert frames[4]["content"]["text"]["text"] == "You chose Billing."
    await resumed.ws.send_json({"type": "read", "up_to_sequence": 6})
    await resumed.ws.send_json({"type": "ping"})
    await resumed.next("pong")
    await resumed.ws.close()


async def test_a_visitor_reaches_only_its_own_conversation(gateway: Gateway) -> None:
    alice = await gateway.socket((await gateway.token())["token"])
    await alice.send("hello alice")
    conversation = (await alice.next("ack"))["conversation_id"]
    bob = await gateway.token()
    # Bob's socket does not see Alice's conversation, and the server refuses Bob there.
    bob_socket = await gateway.socket(bob["token"])
    assert bob_socket.ready["conversation_id"] == ""
    await bob_socket.ws.send_json({"type": "resume", "after_sequence": 0})
    await bob_socket.send("hello bob")
    ack = await bob_socket.next("ack")
    assert ack["conversation_id"] != conversation
    texts = [f["content"].get("text", {}).get("text") for f in await bob_socket.messages_until(2)]
    assert "hello alice" not in texts
    await alice.ws.close()
    await bob_socket.ws.close()


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    msg = await ws.receive(timeout=10)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return ws.close_code, msg.extra or ""


async def test_the_socket_refuses_with_a_close_code_and_reason(
    server: RunningServer, tmp_path: Path
) -> None:
    settings = WebSettings(auth_timeout_seconds=0.5, max_sockets_per_visitor=2)
    async for gateway in _gateway(server, tmp_path, settings):
        url = f"{gateway.url}/web/v1/acme/socket"
        headers = {"Origin": ORIGIN}
        # Origin and tenant are checked before the upgrade: a 4xx with its reason.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gateway.http.ws_connect(url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        ws = await gateway.http.ws_connect(url, headers=headers)
        assert await _closed(ws) == (4408, "no auth frame in time")
        ws = await gateway.http.ws_connect(url, headers=headers)
        await ws.send_str("{not json")
        assert await _closed(ws) == (4400, "frame is not JSON")
        ws = await gateway.http.ws_connect(url, headers=headers)
        await ws.send_json({"type": "auth", "token": "x.y.z"})
        assert await _closed(ws) == (4401, "token invalid")
        ws = await gateway.http.ws_connect(url, headers=headers)
        other = visitor_tokens().mint("initech", "visitor-" + "0" * 32)
        await ws.send_json({"type": "auth", "token": other.token})
        assert (await _closed(ws))[0] == 4401
        token = (await gateway.token())["token"]
        sockets = [await gateway.socket(token), await gateway.socket(token)]
        ws = await gateway.http.ws_connect(url, headers=headers)
        await ws.send_json({"type": "auth", "token": token})
        assert await _closed(ws) == (4429, "too many open sockets for this visitor")
        socket = sockets[0]
        await socket.ws.send_str('{"type": "send", "text": "' + "x" * 20_000 + '"}')
        assert (await _closed(socket.ws))[0] == 1009
        socket = sockets[1]
        await socket.ws.send_json({"type": "send", "client_id": "short"})
        code, reason = await _closed(socket.ws)
        assert code == 4400
        assert "client_id" in reason


async def test_sends_sessions_and_uploads_have_limits(
    server: RunningServer, tmp_path: Path
) -> None:
    settings = WebSettings(
        messages_per_minute=2, sessions_per_ip_per_minute=4, uploads_per_minute=1
    )
    async for gateway in _gateway(server, tmp_path, settings):
        token = (await gateway.token())["token"]
        socket = await gateway.socket(token)
        await socket.send("one")
        await socket.send("two")
        third = await socket.send("three")
        error = await socket.next("error")
        assert error["code"] == "RATE_LIMITED"
        assert error["client_id"] == third
        assert error["retry_after"] > 0
        await socket.ws.close()
        for _ in range(3):
            await gateway.session()
        status, body = await gateway.session()
        assert status == 429
        assert "too many sessions" in body["error"]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


async def _upload(
    gateway: Gateway, token: str | None, data: bytes, name: str = "red.png"
) -> tuple[int, dict[str, object]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    headers = {"Origin": ORIGIN}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with gateway.http.post(
        f"{gateway.url}/web/v1/acme/uploads", data=form, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_an_upload_is_sent_as_media_with_a_thumbnail(gateway: Gateway) -> None:
    token = (await gateway.token())["token"]
    status, held = await _upload(gateway, token, _png())
    assert status == 200, held
    assert held["mime_type"] == "image/png"
    socket = await gateway.socket(token)
    await socket.send("my picture", media_id=held["media_id"])
    (message, _reply) = await socket.messages_until(2)
    media = message["content"]["media"]
    assert media["mime_type"] == "image/png"
    assert media["caption"] == "my picture"
    assert media["thumbnail"]["media_id"]
    assert "data" not in media
    await socket.ws.close()
    assert (await _upload(gateway, None, _png()))[0] == 401
    status, body = await _upload(gateway, token, b"\x00\x01 random bytes \xff" * 10)
    assert status == 415
    assert body == {"error": "this file type is not accepted"}


async def test_an_upload_too_large_is_refused(server: RunningServer, tmp_path: Path) -> None:
    async for gateway in _gateway(server, tmp_path, WebSettings(max_upload_bytes=2048)):
        token = (await gateway.token())["token"]
        status, body = await _upload(gateway, token, _png() + b"\x00" * 4096)
        assert status == 413
        assert "larger" in str(body["error"])


async def test_the_widget_is_served_with_cache_headers(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/web/v1/widget.js") as response:
        if response.status == 404:
            pytest.skip("the widget is not built (make install builds it)")
        assert response.status == 200
        assert response.content_type == "text/javascript"
        etag = response.headers["ETag"]
        assert "max-age" in response.headers["Cache-Control"]
    async with gateway.http.get(
        f"{gateway.url}/web/v1/widget.js", headers={"If-None-Match": etag}
    ) as response:
        assert response.status == 304
    async with gateway.http.get(
        f"{gateway.url}/web/v1/widget.{etag.strip(chr(34))}.js"
    ) as response:
        assert response.status == 200
        assert "immutable" in response.headers["Cache-Control"]
    async with gateway.http.get(f"{gateway.url}/web/v1/demo/acme") as response:
        assert response.status == 200
        assert 'data-site-key="shop-site-key-1"' in await response.text()
    async with gateway.http.get(f"{gateway.url}/web/v1/demo/initech") as response:
        assert response.status == 404


async def test_a_socket_is_told_before_its_token_expires_and_takes_a_fresh_one(
    server: RunningServer, tmp_path: Path
) -> None:
    # A 60-second token is inside the two-minute notice at once.
    runner, url = await start_web_bridge(server.target, tmp_path, lifetime=60)
    try:
        async with aiohttp.ClientSession() as http:
            gateway = Gateway(url=url, http=http)
            session = await gateway.token()
            socket = await gateway.socket(session["token"])
            notice = await socket.next("token_expiring")
            assert notice["expires_at"] == session["expires_at"]
            fresh = await gateway.token(token=session["token"])
            assert fresh["visitor_id"] == session["visitor_id"]
            other = await gateway.token()
            await socket.ws.send_json({"type": "auth", "token": other["token"]})
            refused = await socket.next("error")
            assert refused["reason"] == "the token names another visitor"
            await socket.ws.send_json({"type": "auth", "token": fresh["token"]})
            assert (await socket.next("auth_ok"))["expires_at"] == fresh["expires_at"]
            await socket.send("still here")
            assert (await socket.next("ack"))["sequence"] == 1
            await socket.ws.close()
    finally:
        await runner.cleanup()
