"""What keeps delivery within bounds: attempts and backoff, pacing per destination and
account from each platform's documented limits, the circuit breaker per tenant and channel,
and the rate limits the platforms reported."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from chat.v1 import common_pb2

log = structlog.get_logger("chat.delivery")

#: Longer than the slowest send (an upload and seven parts at 10 s each): a live process must
#: not lose a delivery to another mid-send. A dead process's delivery waits this long.
LEASE_SECONDS = 300.0
#: Below this a lease may run out during a send (an upload and a few parts at 10 s each).
MIN_SAFE_LEASE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Pace:
    """Sends per second and burst, per destination (a recipient, channel or conversation) and
    per account (the tenant's number, page, workspace or bot), from each platform's limits."""

    destination: tuple[float, int] | None
    account: tuple[float, int] | None


#: Slack: about one message per second per channel. Teams, per bot and conversation: 7 in 1 s,
#: 8 in 2 s, 60 in 30 s, 1800 an hour; one every 2 s after a burst of 7 keeps within all four;
#: about 50 per second per app and tenant. WhatsApp: about one message per 6 s per recipient,
#: with bursts; 80 per second per business number. Messenger: no per-user limit; 300 calls
#: per second per page.
PACING: Mapping[int, Pace] = {
    common_pb2.CHANNEL_TYPE_SLACK: Pace(destination=(1.0, 3), account=None),
    common_pb2.CHANNEL_TYPE_TEAMS: Pace(destination=(0.5, 7), account=(50.0, 50)),
    common_pb2.CHANNEL_TYPE_WHATSAPP: Pace(destination=(1 / 6, 10), account=(80.0, 80)),
    common_pb2.CHANNEL_TYPE_MESSENGER: Pace(destination=None, account=(300.0, 300)),
}


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Attempts and backoff."""

    max_attempts: int = 6
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 300.0
    #: Consecutive transient failures of one tenant and channel that open its breaker.
    breaker_threshold: int = 5
    breaker_open_seconds: float = 30.0
    #: How long a claimed delivery is its process's (see LEASE_SECONDS).
    lease_seconds: float = LEASE_SECONDS

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter, never sooner than the platform asked."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        backoff = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
        return max(backoff, retry_after or 0.0)


class DeliveryObserver(Protocol):
    """What the delivery worker reports (the server's metrics)."""

    def delivery_outcome(self, channel: int, outcome: str) -> None:
        """An attempt ended: sent, failed, retried or postponed."""

    def delivery_held(self, channel: int, scope: str) -> None:
        """A platform reported a rate limit over a destination or the account."""

    def breaker_opened(self, channel: int) -> None:
        """A tenant's breaker for this channel opened."""


class NoObserver:
    """Reports nothing (tests, and a worker built without metrics)."""

    def delivery_outcome(self, channel: int, outcome: str) -> None:
        pass

    def delivery_held(self, channel: int, scope: str) -> None:
        pass

    def breaker_opened(self, channel: int) -> None:
        pass


class CircuitBreaker:
    """Per tenant and channel: after ``threshold`` transient failures in a row, sends wait
    ``open_seconds``. Then exactly one send goes through as a probe (the others keep waiting):
    its success closes the breaker, its failure opens it again. A probe that never reports
    (its process busy elsewhere) frees its slot after ``probe_seconds``."""

    def __init__(
        self,
        *,
        threshold: int,
        open_seconds: float,
        probe_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[int], None] = lambda _channel: None,
    ) -> None:
        self._threshold = threshold
        self._on_open = on_open
        self._open_seconds = open_seconds
        self._probe_seconds = probe_seconds
        self._clock = clock
        self._failures: dict[tuple[str, int], int] = {}
        self._open_until: dict[tuple[str, int], float] = {}
        self._probing: dict[tuple[str, int], float] = {}

    def wait_seconds(self, key: tuple[str, int]) -> float:
        """0 when a send may go now (and, half-open, it is the probe); else how long to wait."""
        until = self._open_until.get(key)
        if until is None:
            return 0.0
        now = self._clock()
        if until > now:
            return until - now
        probe = self._probing.get(key)
        if probe is not None and now - probe < self._probe_seconds:
            return min(1.0, self._probe_seconds - (now - probe))  # the probe is out
        self._probing[key] = now
        return 0.0

    def success(self, key: tuple[str, int]) -> None:
        """The platform answered: closed."""
        self._failures.pop(key, None)
        self._open_until.pop(key, None)
        self._probing.pop(key, None)

    def release(self, key: tuple[str, int]) -> None:
        """A send let through did not reach the platform (postponed): no verdict."""
        self._probing.pop(key, None)

    def failure(self, key: tuple[str, int]) -> None:
        """A transient failure; a failed probe opens the breaker again at once."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if self._probing.pop(key, None) is not None or count >= self._threshold:
            self._open_until[key] = self._clock() + self._open_seconds
            self._on_open(key[1])
            log.warning("circuit open", tenant_id=key[0], channel=key[1], failures=count)

    def open_counts(self) -> dict[int, int]:
        """Breakers not closed (open, or half-open until a probe succeeds), by channel."""
        counts: dict[int, int] = {}
        for _tenant_id, channel in self._open_until:
            counts[channel] = counts.get(channel, 0) + 1
        return counts


class RateHolds:
    """Rate limits the platforms reported to this process, until they end: per tenant and
    channel (recipient "") or per recipient. Deliveries and sender actions both wait them out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[tuple[str, int, str], float] = {}

    def seconds(self, tenant_id: str, channel: int, recipient_id: str) -> float:
        """How long sends to this recipient must still wait (0: none)."""
        until = max(
            self._until.get((tenant_id, channel, ""), 0.0),
            self._until.get((tenant_id, channel, recipient_id), 0.0),
        )
        return max(0.0, until - self._clock())

    def hold(self, tenant_id: str, channel: int, recipient_id: str, seconds: float) -> None:
        """Hold the channel (recipient "") or one recipient for ``seconds``."""
        now = self._clock()
        for stale in [key for key, ends in self._until.items() if ends <= now]:
            del self._until[stale]
        key = (tenant_id, channel, recipient_id)
        self._until[key] = max(self._until.get(key, 0.0), now + seconds)


def warn_if_lease_unsafe(lease_seconds: float, send_timeout_seconds: float) -> None:
    """The slowest send is an upload and a few parts, each up to the send timeout: a lease
    shorter than that may lapse mid-send."""
    if lease_seconds < max(MIN_SAFE_LEASE_SECONDS, 6 * send_timeout_seconds):
        log.warning(
            "CHAT_DELIVERY_LEASE_SECONDS is shorter than the slowest send: a live process "
            "may lose a delivery to another mid-send, which then sends it twice",
            lease_seconds=lease_seconds,
        )
