"""Per-key rate limits of the gateway, in memory: a fixed window per key and minute.

In memory because a refusal must cost nothing (no store is touched before a client is known
to be within its limits); with several bridge processes each counts its own share. The table
is bounded: keys whose window has passed are dropped as new ones arrive.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: Keys kept at most; older windows are dropped first.
MAX_KEYS = 100_000


class WindowLimiter:
    """At most ``limit`` hits per key within each ``window`` seconds."""

    def __init__(
        self, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, limit: int) -> float:
        """Count one hit: 0 when allowed, else the seconds until the key may try again."""
        now = self._clock()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        if count >= limit:
            return max(1.0, math.ceil(start + self._window - now))
        self._counts.pop(key, None)  # re-inserted last: the dict stays ordered by activity
        self._counts[key] = (start, count + 1)
        if len(self._counts) > MAX_KEYS:
            self._counts.pop(next(iter(self._counts)))
        return 0.0
