"""Waiting for what the servers do in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    within: float = 20.0,
    interval: float = 0.1,
) -> None:
    """Until ``check`` holds; fails naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
