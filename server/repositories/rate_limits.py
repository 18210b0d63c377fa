"""Rate limits in Redis: one GCRA Lua script checks every limit of a request in one round trip.

GCRA rather than a sliding-window counter: it keeps one number per key (the theoretical arrival
time), spaces requests evenly instead of letting a window's worth through at its start, and
gives the exact time until the next request would pass, which is what RetryInfo reports.
Time comes from the Redis server, so every server process shares one clock.
"""

from __future__ import annotations

from importlib import resources

from server.domain.limits import Decision, Limit
from server.repositories.redis_client import RedisClient
from server.repositories.redis_errors import translate_redis_errors

_SCRIPT = resources.files("server.repositories").joinpath("gcra.lua").read_text()


class RedisRateLimiter:
    """GCRA over Redis; one EVALSHA per check."""

    def __init__(self, *, client: RedisClient) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)

    @translate_redis_errors
    async def load(self) -> None:
        """Load the script ahead of the first call (which would otherwise pay NOSCRIPT)."""
        await self._client.script_load(_SCRIPT)

    @translate_redis_errors
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
