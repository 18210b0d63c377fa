"""The web gateway's parts without servers: visitor tokens and identity, frames, limits,
held uploads, settings."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from chat.v1 import chat_service_pb2, common_pb2
from server.repositories.tenants_file import TenantsFileError, load_tenants
from server.settings import SettingsError
from webhook_bridge.tokens import SigningKey
from webhook_bridge.web import frames
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.limits import WindowLimiter
from webhook_bridge.web.uploads import UploadRefusedError, UploadStore, checked_type
from webhook_bridge.web.visitors import (
    VisitorTokenError,
    VisitorTokens,
    anonymous_subject,
    identity_valid,
)

SECRET = "unit-test-secret-long-enough-for-hs256-tokens"


def tokens(clock: float = 1_000_000.0, key: SigningKey | None = None) -> VisitorTokens:
    return VisitorTokens(
        key=key or SigningKey(algorithm="HS256", key=SECRET),
        issuer="iss",
        audience="aud",
        lifetime_seconds=1800,
        clock=lambda: clock,
    )


def test_identity_is_the_hmac_of_the_user_id() -> None:
    good = hmac.new(b"s3cret", b"user-1", hashlib.sha256).hexdigest()
    assert identity_valid("s3cret", "user-1", good)
    assert identity_valid("s3cret", "user-1", good.upper())
    assert not identity_valid("s3cret", "user-2", good)
    assert not identity_valid("other", "user-1", good)
    assert not identity_valid("", "user-1", good)
    assert not identity_valid("s3cret", "user-1", good[:-1])


def test_anonymous_visitors_are_distinct() -> None:
    assert anonymous_subject() != anonymous_subject()
    assert anonymous_subject().startswith("visitor-")


def test_visitor_tokens_round_trip_and_are_refused_otherwise() -> None:
    now = time.time()
    minted = tokens(now).mint("acme", "visitor-1")
    assert minted.expires_at == int(now) + 1800
    verified = tokens(now).verify(minted.token, "acme")
    assert (verified.subject, verified.tenant_id) == ("visitor-1", "acme")
    with pytest.raises(VisitorTokenError, match="this tenant"):
        tokens(now).verify(minted.token, "globex")
    old = tokens(now - 3600).mint("acme", "visitor-1")
    with pytest.raises(VisitorTokenError, match="expired"):
        tokens(now).verify(old.token, "acme")
    for bad in (None, "", 42, "x" * 5000, "a.b.c"):
        with pytest.raises(VisitorTokenError):
            tokens(now).verify(bad, "acme")


def test_visitor_tokens_with_an_ec_key_are_verified_with_its_public_half() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    key = SigningKey(algorithm="ES256", key=pem, key_id="k1")
    minted = tokens(time.time(), key).mint("acme", "v")
    assert tokens(time.time(), key).verify(minted.token, "acme").subject == "v"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("nope", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"type": "shout"}', "unknown frame type"),
        ('{"type": 1}', "unknown frame type"),
    ],
)
def test_frames_that_are_not_valid_say_why(raw: str, reason: str) -> None:
    with pytest.raises(frames.FrameError, match=reason):
        frames.parse(raw)


def test_send_frames_are_checked() -> None:
    ok = frames.send({"client_id": "abcdefgh", "text": "hi"})
    assert (ok.client_id, ok.text) == ("abcdefgh", "hi")
    choice = frames.send({"client_id": "abcdefgh", "choice": {"id": "b", "title": "B"}})
    assert (choice.choice_id, choice.choice_title) == ("b", "B")
    for fields in (
        {"client_id": "short", "text": "hi"},
        {"client_id": "abcdefgh"},
        {"client_id": "abcdefgh", "text": "   "},
        {"client_id": "abcdefgh", "text": "x" * 5000},
        {"client_id": "abcdefgh", "media_id": "../etc/passwd"},
        {"client_id": "abcdefgh", "choice": "b"},
        {"client_id": "abcdefgh", "choice": {"id": ""}},
        {"client_id": ["abcdefgh"], "text": "hi"},
    ):
        with pytest.raises(frames.FrameError):
            frames.send(fields)
    for value in (-1, 1.5, True, "1", 2**60):
        with pytest.raises(frames.FrameError):
            frames.sequence({"after_sequence": value}, "after_sequence")


def test_stream_events_become_frames() -> None:
    message = common_pb2.Message(
        id="m1",
        sequence=3,
        direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
        content=common_pb2.Content(
            media=common_pb2.MediaContent(data=b"bytes", mime_type="image/png")
        ),
        metadata={"client_id": "abcdefgh"},
    )
    frame = frames.message(message)
    assert frame["sequence"] == 3
    assert frame["direction"] == "in"
    assert frame["client_id"] == "abcdefgh"
    assert "data" not in frame["content"]["media"]
    typing = chat_service_pb2.StreamConversationEventsResponse(
        typing=chat_service_pb2.TypingIndicator(
            typing=True, direction=common_pb2.MESSAGE_DIRECTION_INBOUND
        )
    )
    assert frames.event(typing) is None  # the visitor's own typing is not echoed
    typing.typing.direction = common_pb2.MESSAGE_DIRECTION_OUTBOUND
    assert frames.event(typing) == {"type": "typing", "typing": True}


def test_the_window_limiter_counts_per_key_and_minute() -> None:
    now = [0.0]
    limiter = WindowLimiter(clock=lambda: now[0])
    assert [limiter.hit("a", 2) for _ in range(3)] == [0, 0, 60]
    assert limiter.hit("b", 2) == 0
    now[0] = 59.5
    assert limiter.hit("a", 2) == 1
    now[0] = 60.0
    assert limiter.hit("a", 2) == 0


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="PNG")
    return out.getvalue()


def test_uploads_are_typed_by_their_bytes_and_bounded() -> None:
    assert checked_type(_png(), 1024 * 1024) == "image/png"
    with pytest.raises(UploadRefusedError) as refused:
        checked_type(b"MZ\x90\x00 not a type we take" * 4, 1024)
    assert refused.value.status == 415
    with pytest.raises(UploadRefusedError) as refused:
        checked_type(_png(), 10)
    assert refused.value.status == 413
    now = [0.0]
    store = UploadStore(clock=lambda: now[0])
    held = store.put("v1", b"x", "image/png", "a\x00b.png")
    assert held.file_name == "ab.png"
    assert store.get("v1", held.id) == held
    assert store.get("v2", held.id) is None  # another visitor's
    for _ in range(4):
        store.put("v1", b"x", "image/png", "")
    with pytest.raises(UploadRefusedError):
        store.put("v1", b"x", "image/png", "")
    now[0] = 10_000
    assert store.get("v1", held.id) is None  # expired


def test_web_settings_are_read_and_checked() -> None:
    settings = WebSettings.from_env(
        {"CHAT_WEB_TOKEN_SECONDS": "600", "CHAT_WEB_DEMO_TENANT": "acme"}
    )
    assert (settings.token_seconds, settings.demo_tenant) == (600, "acme")
    for name, value in (
        ("CHAT_WEB_TOKEN_SECONDS", "3600"),
        ("CHAT_WEB_MAX_UPLOAD_BYTES", "999999999"),
        ("CHAT_WEB_MESSAGES_PER_MINUTE", "-1"),
    ):
        with pytest.raises(SettingsError, match=name):
            WebSettings.from_env({name: value})


def test_the_tenants_file_checks_the_web_channel(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  - id: a\n    channels:\n      web:\n"
        "        site_key: site-key-1\n        allowed_origins: [https://a.example]\n"
        "        identity_secret: ${SECRET}\n"
    )
    web = load_tenants(path, {"SECRET": "s"})["a"].channels.web
    assert web is not None
    assert (web.allowed_origins, web.identity_secret) == (("https://a.example",), "s")
    assert "identity_secret" not in repr(web)
    path.write_text(
        "tenants:\n  - id: a\n    channels:\n      web: {site_key: site-key-1, "
        "allowed_origins: ['https://a.example/path']}\n"
    )
    with pytest.raises(TenantsFileError, match="allowed_origins"):
        load_tenants(path, {})


class _StuckSocket:
    """A WebSocket whose peer reads nothing: every send waits forever."""

    def __init__(self) -> None:
        self.closed_with: tuple[int, bytes] | None = None

    async def send_str(self, _data: str) -> None:
        await asyncio.Event().wait()

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed_with = (code, message)


async def test_a_socket_that_does_not_read_is_closed_not_queued_without_bound() -> None:
    from server.domain.tenant import Tenant, WebChannel  # noqa: PLC0415
    from webhook_bridge.web.gateway import WebState  # noqa: PLC0415
    from webhook_bridge.web.visitor_socket import TOO_SLOW, VisitorSocket  # noqa: PLC0415

    ws = _StuckSocket()
    state = WebState(
        tenants={},  # type: ignore[arg-type]
        tokens=tokens(),
        chat=None,  # type: ignore[arg-type]
        settings=WebSettings(max_queued_frames=8),
    )
    socket = VisitorSocket(
        ws=ws,  # type: ignore[arg-type]
        state=state,
        tenant=Tenant(id="acme"),
        channel=WebChannel(),
    )
    writer = asyncio.create_task(socket._write())
    for _ in range(20):
        socket._emit({"type": "pong"})
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert ws.closed_with is not None
    assert ws.closed_with[0] == TOO_SLOW
    writer.cancel()
