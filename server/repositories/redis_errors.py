"""Redis's errors, translated where they arise: services see StoreError, never redis-py's."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from server.domain.errors import StoreError, StoreUnavailableError, Unavailable

P = ParamSpec("P")
T = TypeVar("T")


class RedisUnavailableError(StoreUnavailableError, Unavailable):
    """Redis did not answer in time (CHAT_REDIS_TIMEOUT_MS) or could not be reached.

    Callers that can do without Redis catch it as StoreUnavailableError (the rate limiter
    fails open, live pushes are dropped: streams catch up from MongoDB). Where nothing catches
    it (the session a message needs), the caller gets UNAVAILABLE and may retry with the same
    request_id: nothing was stored. The message is the caller's; the detail is the log's."""

    def __init__(self, detail: str) -> None:
        super().__init__("a store is unavailable; retry shortly", reason="STORE_UNAVAILABLE")
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


def translate_redis_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """An error Redis answered with becomes StoreError; an unreachable or slow server (a
    connection error or a timeout) becomes RedisUnavailableError."""

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (ClusterDownError, TryAgainError) as exc:
            # Answers, but of a cluster that cannot serve the slot just now (a failover, a
            # slot moving): the call may succeed once it is over.
            raise RedisUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            raise StoreError(f"Redis answered with an error: {exc}") from exc
        except (
            RedisError,
            RedisClusterUnreachableError,
            SlotNotCoveredError,
            OSError,
            TimeoutError,
        ) as exc:
            raise RedisUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except RedisClusterException as exc:
            # The client's own refusal (keys of one call in several slots): a defect here,
            # never the caller's to retry.
            raise StoreError(f"Redis Cluster refused the call: {exc}") from exc

    return translated
