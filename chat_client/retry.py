"""When a failed call is tried again, and after how long."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from chat_client.errors import ChatError

#: Codes that say "not now": the server did not act, or asks to be called again later.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

#: Name prefixes of the RPCs that change nothing, so running one twice is harmless.
#: (CheckChannel calls the platform but sends nothing; ExportConversation only reads.)
READ_PREFIXES = ("Get", "List", "Search", "Verify", "Check", "Export")


def is_read(rpc: str) -> bool:
    """Whether the RPC (its bare name, e.g. ``ListConversations``) only reads."""
    return rpc.startswith(READ_PREFIXES)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, never shorter than the server's RetryInfo delay.

    ``attempts`` counts the first call: 1 never retries.
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 10.0
    #: Returns a float in [0, 1); injected so that tests can fix it.
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, error: ChatError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error`` (attempt counts from
        1), or None when the call must not be tried again."""
        if error.code not in RETRYABLE_CODES or attempt >= self.attempts:
            return None
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1)) * self.jitter()
        if error.retry_delay is not None:
            if error.retry_delay > self.max_delay:
                return None  # longer than we wait: the caller sees the error and its delay
            # The server knows when it can take the call again: never earlier than that.
            return max(error.retry_delay, backoff)
        return backoff


NO_RETRIES = RetryPolicy(attempts=1)
