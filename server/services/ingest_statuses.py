"""A batch's status reports (sent, delivered, read, failed), applied in one transaction:
delivery status moves forward only, reports on messages not recorded yet are parked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

import structlog

from chat.v1 import common_pb2, ingest_service_pb2
from server.domain.errors import AlreadyExists
from server.domain.inbound import conversation_user
from server.domain.receipts import StatusReport
from server.services.ingest_outcomes import (
    ACCEPTED,
    DEFERRED,
    DUPLICATE,
    IGNORED,
    UNPROCESSABLE,
    UNPROCESSABLE_MESSAGE,
    Result,
    log_bug,
    outcome,
    raise_unless_a_bug,
    rejected,
)
from server.services.ports import ConversationRepository, IngestLog, TransactionRunner, Tx
from server.services.receipts import Applied, Receipts

log = structlog.get_logger("chat.ingest")


class StatusIngest:
    """Status reports of IngestEvents."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        receipts: Receipts,
        ingest_log: IngestLog,
        transactions: TransactionRunner,
        clock: Callable[[], dt.datetime],
        is_outage: Callable[[Exception], bool],
    ) -> None:
        self._conversations = conversations
        self._receipts = receipts
        self._log = ingest_log
        self._transactions = transactions
        self._clock = clock
        self._is_outage = is_outage

    async def apply(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """The batch's status reports, in one transaction; when that fails on a bug of ours,
        each half on its own, down to the one event that fails, which alone is rejected."""
        if not events:
            return []
        try:
            return await self._apply_statuses(tenant_id, events)
        except Exception as exc:
            raise_unless_a_bug(exc, self._is_outage)
            if len(events) == 1:
                log_bug(exc, events, tenant_id)
                return [rejected(events[0], UNPROCESSABLE, UNPROCESSABLE_MESSAGE)]
            log.warning("status reports failed together; applying them in halves", exc_info=exc)
            half = len(events) // 2
            return [
                *await self.apply(tenant_id, events[:half]),
                *await self.apply(tenant_id, events[half:]),
            ]

    async def _apply_statuses(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        now = self._clock()
        active = await self._conversations.find_active_many(
            tenant_id, {(event.channel, conversation_user(event)) for event in events}
        )
        results = [outcome(event, IGNORED) for event in events]
        reports: dict[int, StatusReport] = {}
        for index, event in enumerate(events):
            report = status_report(
                event, active.get((event.channel, conversation_user(event))), now
            )
            if report.platform_message_ids or report.watermark is not None:
                reports[index] = report
        pending = list(reports)

        async def apply(tx: Tx) -> list[Applied]:
            applied = await self._receipts.apply_reports(
                tenant_id, [reports[i] for i in pending], now=now, tx=tx
            )
            # A report that changed and parked nothing (a backward move) is not recorded as
            # ingested, so the platform's retry may still apply it.
            done = [i for i, a in zip(pending, applied, strict=True) if a.changes or a.parked]
            if done:
                await self._log.record_many(
                    [(tenant_id, events[i].channel, events[i].platform_event_id) for i in done],
                    now=now,
                    tx=tx,
                )
            return applied

        applied = await self._commit_reports(tenant_id, events, pending, apply, results)
        changes = [change for a in applied for change in a.changes]
        await self._receipts.publish(tenant_id, changes)
        parked: dict[int, list[str]] = {}
        for index, done in zip(pending, applied, strict=True):
            if done.changes:
                results[index] = outcome(events[index], ACCEPTED)
            elif done.parked:
                results[index] = outcome(events[index], DEFERRED)
            parked.setdefault(events[index].channel, []).extend(done.parked)
        await self._settle(tenant_id, parked, now=now)
        return results

    async def _commit_reports(
        self,
        tenant_id: str,
        events: Sequence[ingest_service_pb2.InboundEvent],
        pending: list[int],
        apply: Callable[[Tx], Awaitable[list[Applied]]],
        results: list[Result],
    ) -> list[Applied]:
        """Run ``apply`` over the pending reports; a report a racing retry of the platform's
        recorded first is marked DUPLICATE in ``results`` and left out (``pending`` shrinks)."""
        for attempt in range(3):
            if not pending:
                return []
            try:
                return await self._transactions.run(apply)
            except AlreadyExists:
                if attempt == 2:
                    raise
                seen = await self._log.seen_many(
                    tenant_id, [(events[i].channel, events[i].platform_event_id) for i in pending]
                )
                for index in list(pending):
                    if (events[index].channel, events[index].platform_event_id) in seen:
                        results[index] = outcome(events[index], DUPLICATE)
                        pending.remove(index)
        raise AssertionError("unreachable")

    async def _settle(
        self, tenant_id: str, parked: dict[int, list[str]], *, now: dt.datetime
    ) -> None:
        for channel, ids in parked.items():
            if not ids:
                continue
            try:
                # A send's outcome may have been committed while these receipts were parked.
                await self._receipts.settle_known(
                    tenant_id, common_pb2.ChannelType.ValueType(channel), ids, now=now
                )
            except Exception:
                # Parked and acknowledged: a later delivery outcome or receipt still applies.
                log.exception("parked receipts not settled", tenant_id=tenant_id)


def status_report(
    event: ingest_service_pb2.InboundEvent,
    conversation: common_pb2.Conversation | None,
    now: dt.datetime,
) -> StatusReport:
    """The event's status report, with the user's active conversation if any (for a
    watermark, and to match ids unique within a chat only: ``named_by_id``)."""
    report = event.status
    watermark = None
    if report.HasField("watermark_time") and conversation is not None:
        watermark = (conversation.id, report.watermark_time.ToDatetime(tzinfo=dt.UTC))
    return StatusReport(
        channel=event.channel,
        status=report.status,
        platform_message_ids=tuple(pid for pid in report.platform_message_ids if pid),
        watermark=watermark,
        conversation_id=conversation.id if conversation is not None else None,
        error=report.error if report.HasField("error") else None,
        status_time=(
            event.event_time.ToDatetime(tzinfo=dt.UTC) if event.HasField("event_time") else now
        ),
        actor_id=event.platform_user_id,
    )
