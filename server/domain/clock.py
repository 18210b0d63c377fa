"""The service's clock: UTC, at the precision MongoDB stores."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """The current time, truncated to milliseconds (what MongoDB stores)."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
