"""The service's clock: UTC, at the precision MongoDB stores."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """The current time, truncated to milliseconds (what MongoDB stores)."""
    return as_stored(dt.datetime.now(dt.UTC))


def as_stored(moment: dt.datetime) -> dt.datetime:
    """``moment`` truncated to milliseconds, as MongoDB stores it: a value kept in memory
    that a filter matches against the stored one must be."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
