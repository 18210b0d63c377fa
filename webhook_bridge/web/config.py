"""The gateway's settings (prefix ``CHAT_WEB_``) and limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server.processors.media import MAX_MEDIA_BYTES
from server.settings import SettingsError

#: A visitor token lives at most this long; the widget refreshes it before.
MAX_TOKEN_SECONDS = 1800
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where `make install` builds the widget.
DEFAULT_WIDGET_DIR = REPO_ROOT / "clients" / "web-widget" / "dist"


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Limits of the web chat gateway; each has a CHAT_WEB_* variable (docs/settings.md)."""

    token_seconds: int = MAX_TOKEN_SECONDS
    #: A tenant whose demo page the bridge serves at /web/v1/demo/{tenant}; the bridge's own
    #: origin is then allowed for it too. Empty: no demo page.
    demo_tenant: str = ""
    widget_dir: Path = DEFAULT_WIDGET_DIR
    #: Sessions a client IP may create per minute.
    sessions_per_ip_per_minute: int = 30
    #: Sockets a client IP may open per minute.
    sockets_per_ip_per_minute: int = 60
    #: Messages a visitor may send per minute, unless its tenant says otherwise.
    messages_per_minute: int = 30
    #: Uploads a visitor may make per minute.
    uploads_per_minute: int = 10
    max_upload_bytes: int = 10 * 1024 * 1024
    #: Media downloads a visitor may make per minute (a reload fetches every media shown).
    media_per_minute: int = 120
    #: Open sockets one visitor may hold (tabs).
    max_sockets_per_visitor: int = 5
    #: The largest frame a client may send.
    max_frame_bytes: int = 16 * 1024
    #: Frames waiting for a slow socket; past this it is closed rather than held in memory.
    max_queued_frames: int = 256
    heartbeat_seconds: float = 20.0
    #: The first frame (with the token) must come within this.
    auth_timeout_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebSettings:
        """Read the CHAT_WEB_* variables; defaults for those unset."""
        default = cls()
        widget = env.get("CHAT_WEB_WIDGET_DIR", "").strip()
        return cls(
            token_seconds=_int(env, "CHAT_WEB_TOKEN_SECONDS", default.token_seconds, 60, 1800),
            demo_tenant=env.get("CHAT_WEB_DEMO_TENANT", "").strip(),
            widget_dir=Path(widget) if widget else default.widget_dir,
            sessions_per_ip_per_minute=_int(
                env, "CHAT_WEB_SESSIONS_PER_IP_PER_MINUTE", default.sessions_per_ip_per_minute
            ),
            sockets_per_ip_per_minute=_int(
                env, "CHAT_WEB_SOCKETS_PER_IP_PER_MINUTE", default.sockets_per_ip_per_minute
            ),
            messages_per_minute=_int(
                env, "CHAT_WEB_MESSAGES_PER_MINUTE", default.messages_per_minute
            ),
            uploads_per_minute=_int(env, "CHAT_WEB_UPLOADS_PER_MINUTE", default.uploads_per_minute),
            media_per_minute=_int(env, "CHAT_WEB_MEDIA_PER_MINUTE", default.media_per_minute),
            max_upload_bytes=_int(
                env, "CHAT_WEB_MAX_UPLOAD_BYTES", default.max_upload_bytes, 1024, MAX_MEDIA_BYTES
            ),
            max_sockets_per_visitor=_int(
                env, "CHAT_WEB_MAX_SOCKETS_PER_VISITOR", default.max_sockets_per_visitor, 1, 100
            ),
            max_frame_bytes=_int(
                env, "CHAT_WEB_MAX_FRAME_BYTES", default.max_frame_bytes, 1024, 1024 * 1024
            ),
            max_queued_frames=_int(
                env, "CHAT_WEB_MAX_QUEUED_FRAMES", default.max_queued_frames, 8, 100_000
            ),
        )


def _int(
    env: Mapping[str, str], name: str, default: int, low: int = 1, high: int = 1_000_000
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise SettingsError(f"{name}={raw!r}: expected an integer from {low} to {high}")
    return int(raw)
