"""``chat-bridge``: serve the webhook bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from aiohttp import web

from server.log import configure_logging
from server.settings import SettingsError
from webhook_bridge.app import create_app
from webhook_bridge.settings import BridgeSettings


def main() -> None:
    """Entry point of ``chat-bridge``."""
    try:
        settings = BridgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-bridge: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    web.run_app(
        create_app(server_target=settings.server_target),
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10,
    )
