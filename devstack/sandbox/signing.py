"""What makes a webhook the bridge believes: Meta's and Slack's HMAC signatures, and Bot
Framework tokens signed with a key whose OpenID metadata the sandbox itself serves."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"


def meta_signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` of a WhatsApp or Messenger webhook."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_headers(secret: str, body: bytes, *, age: int = 0) -> dict[str, str]:
    """``X-Slack-Request-Timestamp`` and ``X-Slack-Signature`` of a Slack request."""
    stamp = str(int(time.time()) - age)
    base = b"v0:" + stamp.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class BotFrameworkKeys:
    """A Bot Framework signing key: its OpenID metadata and JWKS (with the ``msteams``
    endorsement) are served at ``/botframework/openid`` and ``/botframework/keys``."""

    kid: str = "sandbox-bf-1"
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    #: How often the JWKS was fetched (a bridge caches it).
    fetches: int = 0

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _b64(numbers.n),
            "e": _b64(numbers.e),
        }

    def token(self, *, app_id: str, service_url: str, **claims: Any) -> str:
        """A token as Bot Framework signs one for a bot; a claim given as None is left out."""
        now = int(time.time())
        body = {
            "iss": BOT_FRAMEWORK_ISSUER,
            "aud": app_id,
            "exp": now + 300,
            "nbf": now - 10,
            "serviceurl": service_url,
            **claims,
        }
        present = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(present, self.private_key, algorithm="RS256", headers={"kid": self.kid})

    def add_routes(self, app: web.Application) -> None:
        """The OpenID metadata document and the keys it names."""

        async def metadata(request: web.Request) -> web.Response:
            base = f"{request.scheme}://{request.host}"
            return web.json_response(
                {"issuer": BOT_FRAMEWORK_ISSUER, "jwks_uri": f"{base}/botframework/keys"}
            )

        async def keys(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": [{**self.jwk(), "endorsements": ["msteams"]}]})

        app.router.add_get("/botframework/openid", metadata)
        app.router.add_get("/botframework/keys", keys)
