"""Routes each event to the handlers registered for its type, retrying failures with
exponential backoff and jitter.

One table (``registrations``) says which handler takes which event types. Handlers are
idempotent: each records the event ids it applied, so running one twice changes nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from pymongo.errors import ConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat.v1 import events_pb2
from server.tracing.spans import span

log = structlog.get_logger("chat.worker.router")


class Handler(Protocol):
    """Applies events of some types; idempotent per event id."""

    #: A stable name: it keys the handler's applied-event records and dead letters.
    name: str

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        """Apply the event (doing nothing if it was applied before)."""
        ...


class PermanentError(Exception):
    """A failure retrying cannot fix (the event itself is wrong): dead-letter at once."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A handler and the envelope payload types (field names) it takes."""

    handler: Handler
    event_types: frozenset[str]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per handler and event, with exponential backoff and equal jitter (a delay
    drawn between half the ceiling and the ceiling, so retries of many events spread out)."""

    attempts: int = 5
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 10.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (from 1)."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


@dataclass(frozen=True, slots=True)
class Failure:
    """A handler that gave up on an event."""

    handler: str
    error: str
    attempts: int
    #: The last failure was a store being unreachable (MongoDB, Redis): the event is fine,
    #: so it waits for the store instead of going to the dead-letter topic.
    outage: bool = False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says a store is unreachable rather than the event being wrong."""
    return isinstance(
        exc, ConnectionFailure | RedisConnectionError | RedisTimeoutError | ConnectionError
    )


class Observer(Protocol):
    """What the router reports (the worker's metrics)."""

    def handled(self, handler: str, event_type: str, seconds: float) -> None: ...

    def failed(self, handler: str, event_type: str) -> None: ...


class EventRouter:
    """Dispatches envelopes by payload type."""

    def __init__(
        self,
        registrations: Sequence[Registration],
        *,
        retry: RetryPolicy,
        observer: Observer,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        names = [r.handler.name for r in registrations]
        if len(set(names)) != len(names):
            raise ValueError(f"handler names must be unique: {names}")
        self._by_type: dict[str, list[Handler]] = {}
        for registration in registrations:
            for event_type in registration.event_types:
                self._by_type.setdefault(event_type, []).append(registration.handler)
        self._retry = retry
        self._observer = observer
        self._sleep = sleep

    def handlers_for(self, event_type: str) -> list[Handler]:
        """The handlers of one payload type (none for a type nobody handles)."""
        return list(self._by_type.get(event_type, ()))

    async def dispatch(self, envelope: events_pb2.EventEnvelope) -> list[Failure]:
        """Run every handler of the event (concurrently: they are independent); returns the
        ones that failed after their last attempt."""
        event_type = envelope.WhichOneof("payload") or ""
        handlers = self.handlers_for(event_type)
        results = await asyncio.gather(*(self._run(h, envelope, event_type) for h in handlers))
        return [failure for failure in results if failure is not None]

    async def _run(
        self, handler: Handler, envelope: events_pb2.EventEnvelope, event_type: str
    ) -> Failure | None:
        for attempt in range(1, self._retry.attempts + 1):
            started = time.perf_counter()
            try:
                with span(
                    "worker.handler",
                    attributes={"chat.handler": handler.name, "chat.attempt": attempt},
                ):
                    await handler.handle(envelope)
            except PermanentError as exc:
                self._observer.failed(handler.name, event_type)
                return Failure(handler.name, _describe(exc), attempt)
            except Exception as exc:  # noqa: BLE001 - any other failure may be transient
                self._observer.failed(handler.name, event_type)
                if attempt == self._retry.attempts:
                    return Failure(handler.name, _describe(exc), attempt, outage=is_outage(exc))
                delay = self._retry.delay(attempt)
                log.warning(
                    "handler failed; retrying",
                    handler=handler.name,
                    event_id=envelope.event_id,
                    attempt=attempt,
                    delay_seconds=round(delay, 3),
                    error=_describe(exc),
                )
                await self._sleep(delay)
            else:
                self._observer.handled(handler.name, event_type, time.perf_counter() - started)
                return None
        raise AssertionError("unreachable: the loop returns on the last attempt")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
