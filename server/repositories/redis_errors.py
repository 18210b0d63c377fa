"""Redis's errors, translated where they arise: services see StoreError, never redis-py's."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import RedisError, ResponseError

from server.domain.errors import StoreError, StoreUnavailableError

P = ParamSpec("P")
T = TypeVar("T")


def translate_redis_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """An error Redis answered with becomes StoreError; an unreachable or slow server (a
    connection error or a timeout) becomes StoreUnavailableError."""

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ResponseError as exc:
            raise StoreError(f"Redis answered with an error: {exc}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailableError(f"Redis is unavailable: {exc!r}") from exc

    return translated
