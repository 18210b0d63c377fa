"""``chat-bridge``: serve the webhook bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from aiohttp import web

from server.log import configure_logging
from server.repositories.tenants_file import load_tenants
from server.settings import SettingsError
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
        tenants = load_tenants(settings.tenants_file) if settings.tenants_file else {}
    except (OSError, ValueError) as exc:
        sys.exit(f"chat-bridge: {exc}")
    tokens = ServiceTokens(
        key=settings.token_key, issuer=settings.token_issuer, audience=settings.token_audience
    )
    web.run_app(
        create_app(
            server_target=settings.server_target,
            tenants=tenants,
            tokens=tokens,
            teams_metadata_url=settings.teams_metadata_url,
            max_body_bytes=settings.max_body_bytes,
        ),
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10,
    )
