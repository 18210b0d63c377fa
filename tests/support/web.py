"""The web chat gateway in front of a chat server: a bridge with a tenant whose web channel
is configured, and a WebSocket visitor that speaks the frames."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from server.repositories.tenants_file import load_tenants
from server.tenancy.directory import TenantDirectory
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.servers import tenants_file
from webhook_bridge.app import create_app
from webhook_bridge.http_server import BridgeRunner
from webhook_bridge.tokens import ServiceTokens, SigningKey
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.visitors import VisitorTokens

ORIGIN = "https://shop.example"
SITE_KEY = "shop-site-key-1"
IDENTITY_SECRET = "shop-identity-secret"
WEB_TENANTS = f"""
tenants:
  - id: acme
    channels:
      web:
        site_key: {SITE_KEY}
        allowed_origins: ["{ORIGIN}"]
        identity_secret: {IDENTITY_SECRET}
  - id: globex
  - id: initech
    channels:
      web: {{site_key: initech-site-key, allowed_origins: ["https://initech.example"]}}
"""
#: The server knows the same tenants (without their web channels, which only the bridge reads).
SERVER_TENANTS = "tenants:\n  - id: acme\n  - id: globex\n  - id: initech\n"


def user_hash(user_id: str, secret: str = IDENTITY_SECRET) -> str:
    """What the tenant's backend computes for a logged-in user."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def visitor_tokens(lifetime_seconds: int = 1800) -> VisitorTokens:
    """The bridge's visitor tokens, signed with the tests' shared secret."""
    return VisitorTokens(
        key=SigningKey(algorithm="HS256", key=SECRET),
        issuer=JWT_SETTINGS["CHAT_JWT_ISSUER"],
        audience=JWT_SETTINGS["CHAT_JWT_AUDIENCE"],
        lifetime_seconds=lifetime_seconds,
    )


async def start_web_bridge(
    target: str, tmp_path: Path, settings: WebSettings | None = None, lifetime: int = 1800
) -> tuple[web.AppRunner, str]:
    """The bridge with its gateway, on a free port."""
    path = Path(tenants_file(tmp_path, WEB_TENANTS))
    app = create_app(
        server_target=target,
        tenants=TenantDirectory(file_tenants=load_tenants(path), store=None),
        tokens=ServiceTokens(
            key=SigningKey(algorithm="HS256", key=SECRET),
            issuer=JWT_SETTINGS["CHAT_JWT_ISSUER"],
            audience=JWT_SETTINGS["CHAT_JWT_AUDIENCE"],
        ),
        teams_metadata_url="http://127.0.0.1:9/unused",
        visitor_tokens=visitor_tokens(lifetime),
        web_settings=settings or WebSettings(demo_tenant="acme"),
    )
    runner = BridgeRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class Gateway:
    """HTTP and WebSocket calls to one bridge's gateway."""

    url: str
    http: aiohttp.ClientSession
    tenant: str = "acme"
    origin: str = ORIGIN

    async def session(self, **body: Any) -> tuple[int, dict[str, Any]]:
        """POST sessions with ``body`` (the site key unless given)."""
        body.setdefault("site_key", SITE_KEY)
        async with self.http.post(
            f"{self.url}/web/v1/{self.tenant}/sessions",
            data=json.dumps(body),
            headers={"Origin": self.origin, "Content-Type": "application/json"},
        ) as response:
            return response.status, await response.json(content_type=None)

    async def token(self, **body: Any) -> dict[str, Any]:
        status, answer = await self.session(**body)
        assert status == 200, answer
        return answer

    async def socket(self, token: str, after_sequence: int = 0) -> VisitorSocket:
        """An authenticated socket (its ready frame read)."""
        ws = await self.http.ws_connect(
            f"{self.url}/web/v1/{self.tenant}/socket", headers={"Origin": self.origin}
        )
        await ws.send_json({"type": "auth", "token": token, "after_sequence": after_sequence})
        socket = VisitorSocket(ws)
        socket.ready = await socket.next("ready")
        return socket


@dataclass
class VisitorSocket:
    """One visitor's socket and the frames it received."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)

    async def next(self, kind: str, seconds: float = 15) -> dict[str, Any]:
        """The next frame of ``kind`` (others are kept in ``frames``)."""
        while True:
            msg = await self.ws.receive(timeout=seconds)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket closed: {msg.type} {msg.data} {msg.extra}")
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if frame["type"] == kind:
                return frame

    async def send(self, text: str, client_id: str | None = None, **extra: Any) -> str:
        client_id = client_id or uuid.uuid4().hex
        await self.ws.send_json({"type": "send", "client_id": client_id, "text": text, **extra})
        return client_id

    async def messages_until(self, count: int, seconds: float = 15) -> list[dict[str, Any]]:
        """Message frames until ``count`` have arrived (all of them, in order)."""
        while len(self.messages()) < count:
            await self.next("message", seconds)
        return self.messages()

    def messages(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "message"]
