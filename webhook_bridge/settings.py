"""Settings of the bridge process (prefix ``CHAT_``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from server.settings import LogFormat, Settings, SettingsError


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Where the bridge listens and where it forwards to."""

    host: str
    port: int
    server_target: str
    log_format: LogFormat
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeSettings:
        """Read from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        shared = Settings.from_env(env)
        raw_port = env.get("CHAT_BRIDGE_PORT", "").strip() or "8080"
        try:
            port = int(raw_port)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise SettingsError(f"CHAT_BRIDGE_PORT={raw_port!r}: expected a port number")
        return cls(
            host=env.get("CHAT_BRIDGE_HOST", "").strip() or "0.0.0.0",  # noqa: S104 - a server
            port=port,
            server_target=env.get("CHAT_SERVER_TARGET", "").strip() or "127.0.0.1:8001",
            log_format=shared.log_format,
            log_level=shared.log_level,
        )
