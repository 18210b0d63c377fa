"""The outbox relay: publishes events written by transactions to Kafka, in order, then removes
them from the outbox. At-least-once: an event whose removal is lost is published again, with
the same event id. With Kafka down, events wait; when it is back, every one is published.

Only the holder of a lease relays, so one conversation's events are never published by two
processes at once (which could reorder them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from server.repositories.mongo import Document
from server.repositories.outbox import records
from server.tracing.spans import producing

log = structlog.get_logger("chat.outbox")

#: Outbox documents per read (each holds the events of one transaction).
BATCH = 200
IDLE_SECONDS = 1.0
#: After a wake-up, how long to let more commits arrive before reading: under load one batch
#: then carries the events of several calls (each read and mark is a database round trip).
COALESCE_SECONDS = 0.02
MAX_BACKOFF_SECONDS = 10.0
LOG_INTERVAL_SECONDS = 30.0


class PendingEvents(Protocol):
    """The outbox, as the relay reads it."""

    async def pending(self, limit: int) -> list[Document]: ...

    async def remove(self, document_ids: Sequence[str]) -> None: ...


class RecordPublisher(Protocol):
    """Sends records to Kafka."""

    async def publish_records(
        self, records: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
    ) -> None: ...


class Lease(Protocol):
    """Mutual exclusion across processes."""

    async def acquire(self, *, now: dt.datetime) -> bool: ...

    async def release(self) -> None: ...


class OutboxRelay:
    """Runs until cancelled; ``wake()`` after a commit shortens the wait."""

    def __init__(
        self,
        *,
        outbox: PendingEvents,
        publisher: RecordPublisher,
        lease: Lease,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._lease = lease
        self._clock = clock
        self._wake = asyncio.Event()
        self._backoff = 0.0
        self._last_warning = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.instance = uuid.uuid4().hex

    def wake(self) -> None:
        """New events were committed (or the relay is asked to stop)."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until ``stopping`` is set (then finish the current batch and return)."""
        try:
            while not stopping.is_set():
                published = 0
                try:
                    if await self._lease.acquire(now=self._clock()):
                        published = await self.publish_pending()
                except Exception:
                    log.exception("outbox relay iteration failed")
                    self._backoff = min(MAX_BACKOFF_SECONDS, (self._backoff or 0.25) * 2)
                if published >= BATCH:
                    continue  # more are waiting
                delay = self._backoff or IDLE_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                    if not stopping.is_set():
                        await asyncio.sleep(COALESCE_SECONDS)
                self._wake.clear()
        finally:
            with contextlib.suppress(Exception):
                await self._lease.release()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many outbox documents were published (0 when Kafka
        failed)."""
        batch = await self._outbox.pending(BATCH)
        if not batch:
            return 0
        events = [record for document in batch for record in records(document)]
        try:
            with producing([(record.topic, record.trace) for record in events]) as headers:
                await self._publisher.publish_records(
                    [
                        (record.topic, record.key, record.payload, record_headers)
                        for record, record_headers in zip(events, headers, strict=True)
                    ]
                )
        except Exception as exc:  # noqa: BLE001 - any broker failure: keep the events, retry later
            self._failed(exc, len(events))
            return 0
        await self._outbox.remove([d["_id"] for d in batch])
        if self._backoff:
            log.info("outbox publishing again", published=len(events))
        self._backoff = 0.0
        return len(batch)

    def _failed(self, exc: Any, waiting: int) -> None:
        self._backoff = min(MAX_BACKOFF_SECONDS, (self._backoff or 0.25) * 2)
        now = self._clock()
        if (now - self._last_warning).total_seconds() >= LOG_INTERVAL_SECONDS:
            log.warning(
                "cannot publish events; they wait in the outbox",
                error=repr(exc),
                waiting_at_least=waiting,
                retry_in_seconds=self._backoff,
            )
            self._last_warning = now
