"""``chat-bridge``: serve the webhook bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from pymongo import AsyncMongoClient

from server.log import configure_logging
from server.repositories.secrets import SecretBox
from server.repositories.tenants import MongoTenantStore
from server.repositories.tenants_file import load_tenants
from server.settings import SettingsError
from server.tenancy.directory import TenantDirectory
from server.tracing.setup import configure_tracing
from webhook_bridge.app import create_app
from webhook_bridge.http_server import BridgeRunner
from webhook_bridge.settings import BridgeSettings
from webhook_bridge.tokens import ServiceTokens
from webhook_bridge.web.visitors import VisitorTokens

log = structlog.get_logger("chat.bridge")


def main() -> None:
    """Entry point of ``chat-bridge``."""
    try:
        settings = BridgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-bridge: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    try:
        # Before the app and its clients exist: the instrumentations patch their classes.
        configure_tracing(service_name="chat-bridge", http_server=True)
    except SettingsError as exc:
        sys.exit(f"chat-bridge: {exc}")
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
        body_timeout=settings.body_timeout_seconds,
        calls_at_once=settings.calls_at_once,
        visitor_tokens=VisitorTokens(
            key=settings.token_key,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            lifetime_seconds=settings.web.token_seconds,
        ),
        web_settings=settings.web,
    )
    app.cleanup_ctx.append(follow_tenants)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, settings))


async def serve(app: web.Application, settings: BridgeSettings) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then stop taking connections and let the
    webhooks in flight finish (the runner's shutdown_timeout) before cleaning up.

    The signals set an event rather than raise (the runner's own handle_signals raises
    GracefulExit, which ends asyncio.run, and asyncio.run then cancels every task at once:
    the webhooks in flight were cut, and their platforms saw resets on every deploy)."""
    runner = BridgeRunner(app, header_timeout=settings.header_timeout_seconds)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stopping.wait()
        log.info("stopping: finishing the webhooks in flight")
    finally:
        await runner.cleanup()
