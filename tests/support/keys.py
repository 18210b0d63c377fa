"""Signing keys and a real JWKS endpoint for the authentication tests."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.test"
AUDIENCE = "chat-service"


@dataclass
class KeyPair:
    """A private key and its public JWK."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> KeyPair:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> KeyPair:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        return jwt.encode(
            {**standard_claims(**overrides), **(claims or {})},
            self.private,
            algorithm=self.algorithm,
            headers={
                k: v for k, v in {"kid": self.kid, **(headers or {})}.items() if v is not None
            },
        )


def standard_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tenant_id": "acme",
        "scope": "chat:read chat:write",
        "iat": now,
        "exp": now + 300,
    }
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


@dataclass
class JwksServer:
    """Serves a JWKS document over real HTTP and counts the fetches."""

    keys: list[KeyPair]
    fetches: int = 0
    failing: bool = False
    runner: web.AppRunner | None = field(default=None, repr=False)
    url: str = ""

    async def start(self) -> None:
        async def handler(_request: web.Request) -> web.Response:
            self.fetches += 1
            if self.failing:
                return web.Response(status=503, text="down for maintenance")
            return web.json_response({"keys": [key.jwk() for key in self.keys]})

        app = web.Application()
        app.router.add_get("/jwks.json", handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
