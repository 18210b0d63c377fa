"""The webhook bridge, started in front of a chat server, and signed webhooks sent to it: the
platforms' recorded samples, the tenants they belong to, and the apps' secrets."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from devstack.sandbox.signing import meta_signature, slack_headers
from server.repositories.tenants_file import load_tenants
from server.tenancy.directory import TenantDirectory
from tests.support.bot_framework import TEAMS_APP
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.servers import RunningServer, tenants_file
from webhook_bridge.app import create_app
from webhook_bridge.bodies import BODY_TIMEOUT_SECONDS
from webhook_bridge.http_server import HEADER_TIMEOUT_SECONDS, BridgeRunner
from webhook_bridge.tokens import ServiceTokens, SigningKey

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "platforms"
WHATSAPP_SECRET = "wa-app-secret"
MESSENGER_SECRET = "fb-app-secret"
SLACK_SECRET = "slack-signing-secret"
TENANTS = f"""
tenants:
  - id: acme
    channels:
      whatsapp: {{verify_token: wa-verify, app_secret: {WHATSAPP_SECRET}, access_token: t,
                 phone_number_id: "106540352242922"}}
      messenger: {{verify_token: fb-verify, app_secret: {MESSENGER_SECRET},
                  page_access_token: t, page_id: "PAGE"}}
      slack: {{signing_secret: {SLACK_SECRET}, bot_token: xoxb-t}}
      teams: {{app_id: {TEAMS_APP}, app_password: p}}
  - id: globex
"""


def sample(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / name).read_text())


def unique(payload: Any, *old: str) -> tuple[Any, list[str]]:
    """The payload with each ``old`` id replaced by a fresh one (each test's own events)."""
    raw = json.dumps(payload)
    fresh = []
    for value in old:
        new = f"{value[:12]}-{uuid.uuid4().hex}"
        raw = raw.replace(value, new)
        fresh.append(new)
    return json.loads(raw), fresh


@dataclass
class Bridge:
    url: str
    http: aiohttp.ClientSession
    server: RunningServer | None

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        async with self.http.post(self.url + path, data=body, headers=headers or {}) as response:
            return response.status, await response.text()

    async def meta(self, platform: str, payload: Any, secret: str, tenant: str = "acme") -> int:
        body = json.dumps(payload).encode()
        status, _ = await self.post(
            f"/webhooks/{platform}/{tenant}",
            body,
            {
                "Content-Type": "application/json",
                "X-Hub-Signature-256": meta_signature(secret, body),
            },
        )
        return status

    async def teams(self, activity: Any, token: str) -> tuple[int, str]:
        """A Teams activity with its Bot Framework token."""
        return await self.post(
            "/webhooks/teams/acme",
            json.dumps(activity).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )

    async def slack(
        self, path: str, body: bytes, content_type: str = "application/json", age: int = 0
    ) -> tuple[int, str]:
        headers = {"Content-Type": content_type, **slack_headers(SLACK_SECRET, body, age=age)}
        return await self.post(path, body, headers)


async def start_bridge(
    target: str,
    tmp_path: Path,
    metadata_url: str,
    max_body: int = 64 * 1024,
    *,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    access_log: logging.Logger | None = None,
) -> tuple[web.AppRunner, str]:
    """The bridge as chat-bridge runs it (its app, on its runner), on a free port."""
    tokens = ServiceTokens(
        key=SigningKey(algorithm="HS256", key=SECRET),
        issuer=JWT_SETTINGS["CHAT_JWT_ISSUER"],
        audience=JWT_SETTINGS["CHAT_JWT_AUDIENCE"],
    )
    path = Path(tenants_file(tmp_path, TENANTS))
    app = create_app(
        server_target=target,
        tenants=TenantDirectory(file_tenants=load_tenants(path), store=None),
        tokens=tokens,
        teams_metadata_url=metadata_url,
        max_body_bytes=max_body,
        body_timeout=body_timeout,
    )
    runner = BridgeRunner(app, header_timeout=header_timeout, access_log=access_log)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
