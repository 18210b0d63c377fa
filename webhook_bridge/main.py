"""``chat-bridge``: serve the webhook bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pymongo import AsyncMongoClient

from server.log import configure_logging
from server.repositories.secrets import SecretBox
from server.repositories.tenants import MongoTenantStore
from server.repositories.tenants_file import load_tenants
from server.settings import SettingsError
from server.tenancy.directory import TenantDirectory
from webhook_bridge.app import create_app
from webhook_bridge.settings import BridgeSettings
from webhook_bridge.tokens import ServiceTokens


def main() -> None:
    """Entry point of ``chat-bridge``."""
    try:
        settings = BridgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-bridge: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    try:
        file_tenants = load_tenants(settings.tenants_file) if settings.tenants_file else {}
        secrets = (
            SecretBox.from_file(settings.tenant_secrets_key_file)
            if settings.tenant_secrets_key_file
            else None
        )
    except (OSError, ValueError) as exc:
        sys.exit(f"chat-bridge: {exc}")
    tokens = ServiceTokens(
        key=settings.token_key, issuer=settings.token_issuer, audience=settings.token_audience
    )
    # Tenants created through TenantService live in MongoDB, followed by a change stream.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, appname="chat-bridge", serverSelectionTimeoutMS=5000
    )
    tenants = TenantDirectory(
        file_tenants=file_tenants,
        store=MongoTenantStore(database=mongo[settings.mongodb_database], secrets=secrets),
    )

    async def follow_tenants(_app: web.Application) -> AsyncIterator[None]:
        await tenants.start()
        yield
        await tenants.close()
        await mongo.close()

    app = create_app(
        server_target=settings.server_target,
        tenants=tenants,
        tokens=tokens,
        teams_metadata_url=settings.teams_metadata_url,
        max_body_bytes=settings.max_body_bytes,
    )
    app.cleanup_ctx.append(follow_tenants)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10,
    )
