"""The inbox's worker: batches of platform events stored by IngestEvents' ``apply_later`` (a
webhook too large to apply within the platform's deadline), applied shortly after the call.

A batch is claimed with a lease, applied like any batch (IngestService.apply), then removed.
A crash, or a lease lost, between applying and removing means the batch is applied again,
which changes nothing: the ingest log deduplicates every event. A tenant's batches are applied
one after another in the order they were stored, so a user's messages keep their order. A
store outage gives the batch back, to be tried again a second later, for as long as it lasts;
any other failure (a bug of ours) is retried with backoff, and after MAX_ATTEMPTS the batch is
set aside in the inbox for an operator, logged as an error, no longer holding the tenant's
later batches back.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
from collections.abc import Callable

import structlog

from chat.v1 import ingest_service_pb2
from server.domain.queues import ClaimedInboxBatch, Due
from server.services.ingest import IngestService
from server.services.ingest_outcomes import REJECTED
from server.services.ports import IngestInbox
from server.services.queue_worker import LeasedQueueWorker
from server.tracing.spans import span

log = structlog.get_logger("chat.ingest.inbox")

#: Far beyond the time a batch of 1,000 events takes to apply (a few seconds).
LEASE = dt.timedelta(seconds=60)
#: Failed attempts (not counting store outages) before a batch is set aside.
MAX_ATTEMPTS = 10
#: Batches applied at once by one process. One: the oldest due batch first, so a process
#: applies each tenant's batches in order without waiting on itself (IngestService.apply runs
#: a batch's conversations concurrently, which is what fills the group commits). A batch
#: claimed while an earlier one of its tenant is held by another process is given back for a
#: moment.
CONCURRENCY = 1
_IN_ORDER_RETRY = dt.timedelta(milliseconds=200)
_OUTAGE_RETRY = dt.timedelta(seconds=1)


class InboxWorker(LeasedQueueWorker[ClaimedInboxBatch]):
    """Applies the inbox's batches, each tenant's in order."""

    def __init__(
        self,
        *,
        inbox: IngestInbox,
        ingest: IngestService,
        clock: Callable[[], dt.datetime],
        is_outage: Callable[[Exception], bool],
        on_applied: Callable[[str, int], None] = lambda _outcome, _count: None,
    ) -> None:
        """``on_applied(outcome, count)`` counts the applied events by their outcome."""
        super().__init__(name="ingest-inbox", concurrency=CONCURRENCY, lease=LEASE)
        self._inbox = inbox
        self._ingest = ingest
        self._clock = clock
        self._is_outage = is_outage
        self._on_applied = on_applied

    async def due(self, limit: int) -> list[Due]:
        return await self._inbox.due(now=self._clock(), limit=limit)

    async def claim_many(self, items: list[Due]) -> list[ClaimedInboxBatch]:
        return await self._inbox.claim_many(
            items, owner=self._owner, now=self._clock(), lease=LEASE
        )

    async def handle(self, item: ClaimedInboxBatch) -> None:
        # Applied after the call: the batch's traceparent ties it to the webhook's trace.
        with span("ingest.inbox", parent=item.trace, attributes={"chat.attempt": item.attempts}):
            await self._apply(item)

    async def _apply(self, item: ClaimedInboxBatch) -> None:
        try:
            if await self._inbox.earlier_waiting(item):
                due = self._clock() + _IN_ORDER_RETRY
                await self._inbox.postpone(item, due=due, counted=False)
                return
            events = ingest_service_pb2.IngestEventsRequest.FromString(item.events).events
            results = await self._ingest.apply(item.tenant_id, events)
        except Exception as exc:  # noqa: BLE001 - every failure gives the batch back
            await self._failed(item, exc)
            return
        outcomes = collections.Counter(
            ingest_service_pb2.IngestOutcome.Name(result.outcome)
            .removeprefix("INGEST_OUTCOME_")
            .lower()
            for result in results
        )
        for name, count in outcomes.items():
            self._on_applied(name, count)
        for result in results:
            if result.outcome == REJECTED:
                log.warning(
                    "queued event rejected",
                    tenant_id=item.tenant_id,
                    platform_event_id=result.platform_event_id,
                    reason=result.error_reason,
                    error=result.error_message,
                )
        log.info(
            "queued events applied",
            tenant_id=item.tenant_id,
            batch_id=item.id,
            waited_seconds=round((self._clock() - item.enqueue_time).total_seconds(), 3),
            **outcomes,
        )
        try:
            completed = await self._inbox.complete(item)
        except Exception as exc:  # noqa: BLE001 - applied; removing it is tried again later
            # Applied but not removed: once its lease lapses it is applied again, and every
            # event is a duplicate then.
            log.warning(
                "queued batch applied but not removed",
                tenant_id=item.tenant_id,
                batch_id=item.id,
                error=repr(exc),
            )
            return
        if not completed:
            # Another process took the batch over and applies it again: nothing changes.
            log.warning("queued batch's lease lost", tenant_id=item.tenant_id, batch_id=item.id)

    async def _failed(self, item: ClaimedInboxBatch, exc: Exception) -> None:
        if self._is_outage(exc):
            log.warning(
                "queued events not applied; store unavailable",
                tenant_id=item.tenant_id,
                batch_id=item.id,
                error=repr(exc),
            )
            with contextlib.suppress(Exception):  # an outage: its lease lapses instead
                await self._inbox.postpone(item, due=self._clock() + _OUTAGE_RETRY, counted=False)
            return
        if item.attempts >= MAX_ATTEMPTS:
            log.error(
                "queued events set aside",
                exc_info=exc,
                tenant_id=item.tenant_id,
                batch_id=item.id,
                attempts=item.attempts,
            )
            with contextlib.suppress(Exception):
                await self._inbox.set_aside(item, error=repr(exc))
            return
        log.warning(
            "queued events not applied; retrying",
            exc_info=exc,
            tenant_id=item.tenant_id,
            batch_id=item.id,
            attempts=item.attempts,
        )
        delay = dt.timedelta(seconds=min(60, 2**item.attempts))
        with contextlib.suppress(Exception):
            await self._inbox.postpone(item, due=self._clock() + delay)
