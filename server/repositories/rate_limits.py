"""Rate limits in Redis: one GCRA Lua script checks every limit of a request in one round trip.

GCRA rather than a sliding-window counter: it keeps one number per key (the theoretical arrival
time), spaces requests evenly instead of letting a window's worth through at its start, and
gives the exact time until the next request would pass, which is what RetryInfo reports.
Time comes from the Redis server, so every server process shares one clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import redis.asyncio as redis

_SCRIPT = resources.files("server.repositories").joinpath("gcra.lua").read_text()


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request counts against."""

    key: str
    per_second: float
    burst: int
    subject: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may pass; when not, how long to wait and which limits refused."""

    allowed: bool
    retry_after_seconds: float = 0.0
    refused: tuple[Limit, ...] = ()


class RateLimiter(Protocol):
    """Counts a request against its limits."""

    async def check(self, limits: tuple[Limit, ...]) -> Decision:
        """Charge every limit if all admit the request; raise if the store is unreachable."""
        ...


def limit_key(tenant_id: str, kind: str, name: str = "") -> str:
    """``rl:{tenant}:kind[:name]``: the braces keep a tenant's keys in one Redis Cluster slot,
    so one script can touch them all. Long names are hashed to bound the key size."""
    if len(name) > 64:
        name = hashlib.sha256(name.encode()).hexdigest()
    return f"rl:{{{tenant_id}}}:{kind}" + (f":{name}" if name else "")


class RedisRateLimiter:
    """GCRA over Redis; one EVALSHA per check."""

    def __init__(self, *, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)

    async def load(self) -> None:
        """Load the script ahead of the first call (which would otherwise pay NOSCRIPT)."""
        await self._client.script_load(_SCRIPT)

    async def check(self, limits: tuple[Limit, ...]) -> Decision:
        """Charge every limit if all admit the request (atomically)."""
        args: list[int] = []
        for limit in limits:
            args += [max(1, round(1_000_000 / limit.per_second)), limit.burst]
        reply = await self._script(keys=[limit.key for limit in limits], args=args)
        if int(reply[0]) == 1:
            return Decision(allowed=True)
        return Decision(
            allowed=False,
            retry_after_seconds=int(reply[1]) / 1_000_000,
            refused=tuple(limits[int(index) - 1] for index in reply[2:]),
        )
