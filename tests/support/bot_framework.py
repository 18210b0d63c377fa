"""A local stand-in for Bot Framework's OpenID metadata and signing keys (Teams tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.support.keys import KeyPair

TEAMS_APP = "11111111-2222-3333-4444-555555555555"
SERVICE_URL = "https://smba.trafficmanager.net/amer/"


@dataclass
class TeamsKeys:
    key: KeyPair
    metadata_url: str
    fetches: int = 0

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": "https://api.botframework.com",
            "aud": TEAMS_APP,
            "exp": now + 300,
            "nbf": now - 10,
            "serviceurl": SERVICE_URL,
            **claims,
        }
        return self.key.sign({k: v for k, v in body.items() if v is not None}, **no_defaults())


def no_defaults() -> dict[str, Any]:
    # KeyPair.sign adds the chat-service claims; the Bot Framework token has none of them.
    return {"iss": None, "aud": None, "sub": None, "tenant_id": None, "scope": None, "iat": None}


@pytest.fixture
async def teams_keys() -> AsyncIterator[TeamsKeys]:
    """A local stand-in for Bot Framework's OpenID metadata and keys (with endorsements)."""
    keys = TeamsKeys(KeyPair.rsa("bf-key-1"), "")
    app = web.Application()

    async def metadata(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {"issuer": "https://api.botframework.com", "jwks_uri": f"{base}/keys"}
        )

    async def jwks(_: web.Request) -> web.Response:
        keys.fetches += 1
        return web.json_response({"keys": [{**keys.key.jwk(), "endorsements": ["msteams"]}]})

    app.router.add_get("/openid", metadata)
    app.router.add_get("/keys", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    keys.metadata_url = f"http://127.0.0.1:{runner.addresses[0][1]}/openid"
    yield keys
    await runner.cleanup()
