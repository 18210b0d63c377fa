"""Development tokens: HS256 with a secret kept under the data directory.

Production verifies RS256/ES256 tokens from the organisation's identity provider; this exists
so that `make run` can hand a new user a token that works at once.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from pathlib import Path

import jwt

DEV_ISSUER = "chat-service-dev"
DEV_AUDIENCE = "chat-service"
DEV_SCOPES = ("chat:read", "chat:write", "chat:admin")


def dev_secret(data_dir: Path) -> str:
    """The development signing secret, created once so tokens survive restarts."""
    return (
        _private_file(data_dir / "dev-jwt-secret", secrets.token_urlsafe(48))
        .read_text(encoding="utf-8")
        .strip()
    )


def dev_tenant_secrets_key(data_dir: Path) -> Path:
    """The development key for stored tenants' secrets, created once (the data outlives a
    restart, so must the key)."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    return _private_file(data_dir / "dev-tenant-secrets-key", key)


def _private_file(path: Path, content: str) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by its owner only, never world-readable even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
    return path


def mint_dev_token(
    *,
    secret: str,
    tenant_id: str,
    subject: str = "dev-user",
    scopes: tuple[str, ...] = DEV_SCOPES,
    lifetime_seconds: int = 24 * 3600,
) -> str:
    """An HS256 token with the claims the service reads."""
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": subject,
        "tenant_id": tenant_id,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
    }
    return jwt.encode(claims, secret, algorithm="HS256")
