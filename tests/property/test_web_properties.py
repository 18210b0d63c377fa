"""Whatever a browser sends the web gateway, it never answers with a 5xx, a traceback or a
Python class name: a session request gets 200 or a 4xx with a reason, and a socket frame gets
well-formed frames back or a documented close code with its reason."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.chat_client import JWT_SETTINGS
from tests.support.servers import RunningServer, tenants_file
from tests.support.web import ORIGIN, SERVER_TENANTS, SITE_KEY, Gateway, start_web_bridge
from webhook_bridge.web.config import WebSettings

StartServer = Callable[..., Awaitable[RunningServer]]
_LEAKS = re.compile(r"Traceback|<class |\b[A-Z]\w+(Error|Exception)\b|File \"")
CLOSE_CODES = {1009, 4400, 4401, 4403, 4409, 4429}
SERVER_TYPES = {
    "ready",
    "message",
    "ack",
    "typing",
    "status",
    "closed",
    "error",
    "token_expiring",
    "auth_ok",
    "pong",
}
SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.sampled_from([2**53, 2**63, -1, 0, 1.5, 1e300])
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["client_id", "text", "media_id", "choice", "after_sequence", "up_to_sequence", "typing"]


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    """A frame: well-shaped with odd values, any JSON, any text, or bytes."""
    how = draw(st.sampled_from(["shaped", "shaped", "json", "text", "bytes"]))
    if how == "text":
        return draw(st.text(max_size=200))
    if how == "bytes":
        return draw(st.binary(max_size=200))
    if how == "json":
        return json.dumps(draw(JSON))
    frame: dict[str, Any] = {
        "type": draw(st.sampled_from(["send", "typing", "read", "resume", "ping", "auth", "x"]))
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        frame[name] = draw(
            st.one_of(
                JSON,
                st.sampled_from(["abcdefgh12", "upload-" + "0" * 32, {"id": "b", "title": "B"}]),
            )
        )
    return json.dumps(frame)


@pytest.fixture
async def gateway(start_server: StartServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    (tmp_path / "server").mkdir()
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path / "server", SERVER_TENANTS), **JWT_SETTINGS
    )
    # Limits high enough that the examples exercise the frames, not the limits.
    web = WebSettings(
        messages_per_minute=100_000,
        sessions_per_ip_per_minute=100_000,
        sockets_per_ip_per_minute=100_000,
    )
    runner, url = await start_web_bridge(server.target, tmp_path, web)
    async with aiohttp.ClientSession() as http:
        yield Gateway(url=url, http=http)
    await runner.cleanup()


@SETTINGS
@given(
    body=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"site_key": st.just(SITE_KEY)},
            optional={"user_id": JSON, "user_hash": JSON, "token": JSON},
        ),
    )
)
async def test_any_session_body_is_answered_200_or_4xx(gateway: Gateway, body: Any) -> None:
    async with gateway.http.post(
        f"{gateway.url}/web/v1/acme/sessions",
        data=json.dumps(body),
        headers={"Origin": ORIGIN},
    ) as response:
        text = await response.text()
        assert response.status == 200 or 400 <= response.status < 500, (response.status, text)
    assert not _LEAKS.search(text), text
    if response.status != 200:
        assert json.loads(text)["error"]


@SETTINGS
@given(frame=frames())
async def test_any_frame_is_answered_or_closed_with_a_reason(
    gateway: Gateway, frame: str | bytes
) -> None:
    token = (await gateway.token())["token"]
    socket = await gateway.socket(token)
    ws = socket.ws
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    await ws.send_json({"type": "ping"})
    try:
        while True:
            msg = await ws.receive(timeout=20)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                assert ws.close_code in CLOSE_CODES, (ws.close_code, msg.extra)
                assert msg.extra, "a close without a reason"
                assert not _LEAKS.search(msg.extra), msg.extra
                return
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            assert not _LEAKS.search(msg.data), msg.data
            answer = json.loads(msg.data)
            assert answer["type"] in SERVER_TYPES, answer
            if answer["type"] == "pong":
                return  # still open, and answering
    finally:
        await ws.close()
