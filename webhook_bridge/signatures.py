"""Webhook signatures, checked over the raw body bytes with constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac

#: Slack's replay window: a request signed longer ago than this is refused.
SLACK_MAX_AGE_SECONDS = 300
#: Seconds since the epoch stay at 10 digits until the year 2286.
MAX_TIMESTAMP_DIGITS = 12


def meta_signature_valid(app_secret: str, body: bytes, header: str | None) -> bool:
    """Meta (WhatsApp, Messenger): ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``."""
    if not header or not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest refuses non-ASCII strings (a forged header must be a 403).
    given = header.removeprefix("sha256=").strip().lower().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected.encode(), given)


def slack_signature_valid(
    signing_secret: str,
    body: bytes,
    *,
    timestamp: str | None,
    signature: str | None,
    now: float,
) -> bool:
    """Slack v0: ``v0=<hex HMAC-SHA256(secret, "v0:" + timestamp + ":" + body)>``, within
    the replay window."""
    if not timestamp or not signature or not signing_secret:
        return False
    # Seconds since the epoch: a longer number is no time at all (and would overflow a float).
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > MAX_TIMESTAMP_DIGITS:
        return False
    sent = int(timestamp)
    if abs(now - sent) > SLACK_MAX_AGE_SECONDS:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(
        expected.encode(), signature.strip().encode("utf-8", "surrogateescape")
    )
