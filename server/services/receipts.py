"""Delivery receipts: statuses the platforms report move outbound messages forward (never
back), with a MessageDelivered event each and an update on the conversation's streams.

A receipt can arrive before its message is recorded as sent: WhatsApp may report "sent" or
"delivered" within milliseconds of accepting a message, while the delivery's outcome is still
being committed. Such a receipt names a platform id no message has yet, so it is parked
(repositories/receipts) and applied in the transaction that records the outcome. One parked
while that transaction runs is not in its snapshot, so both sides also look for the other
after their own commit (the ingest for the message, the delivery for parked receipts):
whichever commits second finds the first. Only a process that dies between its commit and
that look leaves a receipt parked (until the platform's next receipt, or a day).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.queues import ReportedFailure
from server.domain.receipts import (
    FORWARD_FROM,
    EarlyReceipt,
    ReceiptRef,
    StatusReport,
    named_by_id,
    receipt_ref,
)
from server.events.envelopes import envelope
from server.services.live import QuietLiveEvents, timestamp_of
from server.services.ports import (
    DeliveryQueue,
    EarlyReceiptStore,
    MessageRepository,
    Outbox,
    TransactionRunner,
    Tx,
)

log = structlog.get_logger("chat.receipts")

#: Parked statuses are applied in this order (each only where it moves the status forward).
_ORDER = (
    common_pb2.DELIVERY_STATUS_SENT,
    common_pb2.DELIVERY_STATUS_DELIVERED,
    common_pb2.DELIVERY_STATUS_READ,
    common_pb2.DELIVERY_STATUS_FAILED,
)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A message whose status a receipt moved."""

    message: common_pb2.Message
    status: common_pb2.DeliveryStatus.ValueType
    error: common_pb2.PlatformError | None
    status_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Applied:
    """What one status report did: the messages it moved, and the ids it was parked for."""

    changes: list[StatusChange]
    parked: list[str]


class Receipts:
    """Applies receipts in a caller's transaction, parks early ones, and settles them."""

    def __init__(
        self,
        *,
        messages: MessageRepository,
        deliveries: DeliveryQueue,
        early: EarlyReceiptStore,
        outbox: Outbox,
        transactions: TransactionRunner,
        live: QuietLiveEvents,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._messages = messages
        self._deliveries = deliveries
        self._early = early
        self._outbox = outbox
        self._transactions = transactions
        self._live = live
        self._on_events = on_events

    async def apply(
        self,
        tenant_id: str,
        *,
        channel: common_pb2.ChannelType.ValueType,
        status: common_pb2.DeliveryStatus.ValueType,
        platform_message_ids: Sequence[str],
        watermark: tuple[str, dt.datetime] | None,
        conversation_id: str | None,
        error: common_pb2.PlatformError | None,
        status_time: dt.datetime,
        actor_id: str,
        now: dt.datetime,
        tx: Tx,
    ) -> list[StatusChange]:
        """Move the messages the receipt names (by id or watermark) forward, with an event
        each, in the caller's transaction; the changes, to publish after the commit."""
        changed = await self._messages.apply_status(
            tenant_id,
            channel=channel,
            status=status,
            platform_message_ids=platform_message_ids,
            watermark=watermark,
            conversation_id=conversation_id,
            tx=tx,
        )
        changes = [StatusChange(m, status, error, status_time) for m in changed]
        await self._fail_deliveries(tenant_id, changes, tx=tx)
        if changes:
            await self._outbox.add(
                [_delivered(tenant_id, actor_id, channel, change, now) for change in changes],
                now=now,
                tx=tx,
            )
        return changes

    async def apply_reports(
        self, tenant_id: str, reports: Sequence[StatusReport], *, now: dt.datetime, tx: Tx
    ) -> list[Applied]:
        """Apply a batch's reports in the caller's transaction, in a few statements whatever
        their number: the messages they name are read at once, each report is applied in
        memory, in order, to what the reports before it left (forward only, as ``apply``),
        then every status is written, every event added and every receipt for a message not
        recorded yet parked, together. What each report did, in order; a report that moved
        and parked nothing changed nothing."""
        current: dict[str, common_pb2.Message] = {}
        named: dict[tuple[int, str], list[common_pb2.Message]] = {}
        wanted: dict[int, set[str]] = {}
        for report in reports:
            wanted.setdefault(report.channel, set()).update(report.platform_message_ids)
        for channel, names in wanted.items():
            if not names:
                continue
            for found in await self._messages.by_platform_ids(
                tenant_id, channel, sorted(names), tx=tx
            ):
                message = current.setdefault(found.id, found)
                named.setdefault((channel, message.platform_message_id), []).append(message)
        applied: list[Applied] = []
        moved: dict[str, common_pb2.Message] = {}
        events: list[events_pb2.EventEnvelope] = []
        parked: list[EarlyReceipt] = []
        for report in reports:
            targets = {
                message.id: message
                for pid in report.platform_message_ids
                for message in named_by_id(
                    report.channel,
                    (
                        m
                        for m in named.get((report.channel, pid), [])
                        if m.direction == common_pb2.MESSAGE_DIRECTION_OUTBOUND
                    ),
                    report.conversation_id,
                )
            }
            if report.watermark is not None:
                for found in await self._messages.watermarked(tenant_id, *report.watermark, tx=tx):
                    message = current.setdefault(found.id, found)
                    targets[message.id] = message
            changes = []
            for message in sorted(targets.values(), key=lambda m: m.sequence):
                if message.delivery_status in FORWARD_FROM[report.status]:
                    message.delivery_status = report.status
                    moved[message.id] = message
                    snapshot = common_pb2.Message()
                    snapshot.CopyFrom(message)
                    changes.append(
                        StatusChange(snapshot, report.status, report.error, report.status_time)
                    )
            ids = report.platform_message_ids
            # A single id that moved needs no parking; of several, the unknown ones wait.
            unknown = (
                []
                if changes and len(ids) <= 1
                else [pid for pid in ids if (report.channel, pid) not in named]
            )
            events += [
                _delivered(tenant_id, report.actor_id, report.channel, change, now)  # type: ignore[arg-type]
                for change in changes
            ]
            parked += [
                EarlyReceipt(
                    tenant_id=tenant_id,
                    channel=report.channel,
                    platform_message_id=pid,
                    conversation_id=report.conversation_id or "",
                    status=report.status,
                    error=report.error,
                    status_time=report.status_time,
                    actor_id=report.actor_id,
                )
                for pid in unknown
            ]
            applied.append(Applied(changes=changes, parked=unknown))
        await self._messages.set_statuses(
            tenant_id, [(m.id, m.delivery_status) for m in moved.values()], tx=tx
        )
        await self._fail_deliveries(
            tenant_id, [change for a in applied for change in a.changes], tx=tx
        )
        if events:
            await self._outbox.add(events, now=now, tx=tx)
        if parked:
            await self._early.park(parked, now=now, tx=tx)
        return applied

    async def _fail_deliveries(
        self, tenant_id: str, changes: Sequence[StatusChange], *, tx: Tx
    ) -> None:
        """A message the platform accepted and then reported failed (WhatsApp's 131026 comes
        so): its delivery becomes FAILED too, listed and retried like any failed delivery."""
        failures = [
            ReportedFailure(message_id=c.message.id, time=c.status_time, error=c.error)
            for c in changes
            if c.status == common_pb2.DELIVERY_STATUS_FAILED
        ]
        if failures:
            await self._deliveries.fail_sent(tenant_id, failures, tx=tx)

    async def take_and_apply(
        self, refs: Sequence[ReceiptRef], *, now: dt.datetime, tx: Tx
    ) -> list[tuple[str, StatusChange]]:
        """In the caller's transaction: apply the receipts parked under these refs
        and remove them; the changes by tenant, in the order to publish them."""
        receipts = [r for r in await self._early.take(refs, tx=tx) if r.status in _ORDER]
        changes: list[tuple[str, StatusChange]] = []
        for receipt in sorted(receipts, key=lambda r: _ORDER.index(r.status)):
            applied = await self.apply(
                receipt.tenant_id,
                channel=common_pb2.ChannelType.ValueType(receipt.channel),
                status=receipt.status,
                platform_message_ids=[receipt.platform_message_id],
                watermark=None,
                conversation_id=receipt.conversation_id or None,
                error=receipt.error,
                status_time=receipt.status_time,
                actor_id=receipt.actor_id,
                now=now,
                tx=tx,
            )
            changes += [(receipt.tenant_id, change) for change in applied]
        return changes

    async def settle(
        self, refs: Sequence[ReceiptRef], *, now: dt.datetime
    ) -> list[tuple[str, StatusChange]]:
        """After a commit: apply the receipts parked under these refs, in a transaction of
        their own; the changes, for the caller to publish. One read when none waits."""
        if not await self._early.waiting(refs):
            return []

        async def work(tx: Tx) -> list[tuple[str, StatusChange]]:
            return await self.take_and_apply(refs, now=now, tx=tx)

        changes = await self._transactions.run(work)
        log.info("early receipts applied", changed=len(changes))
        return changes

    async def settle_known(
        self,
        tenant_id: str,
        channel: common_pb2.ChannelType.ValueType,
        platform_message_ids: Sequence[str],
        *,
        now: dt.datetime,
    ) -> None:
        """After parking: the sends may have been recorded meanwhile; settle and publish."""
        known = await self._messages.known_platform_ids(tenant_id, channel, platform_message_ids)
        changes = await self.settle(
            [receipt_ref(tenant_id, channel, pid) for pid in known], now=now
        )
        await self.publish(tenant_id, [change for _, change in changes])

    async def publish(self, tenant_id: str, changes: Sequence[StatusChange]) -> None:
        """After the commit: wake the relay and push the new statuses to the streams."""
        if not changes:
            return
        self._on_events()
        by_conversation: dict[str, list[chat_service_pb2.StreamConversationEventsResponse]] = {}
        for change in changes:
            by_conversation.setdefault(change.message.conversation_id, []).append(
                chat_service_pb2.StreamConversationEventsResponse(
                    event_time=timestamp_of(change.status_time),
                    delivery_status=chat_service_pb2.DeliveryStatusUpdate(
                        message_id=change.message.id,
                        sequence=change.message.sequence,
                        status=change.status,
                        error=change.error,
                    ),
                )
            )
        for conversation_id, updates in by_conversation.items():
            await self._live.publish(tenant_id, conversation_id, updates)


def _delivered(
    tenant_id: str,
    actor_id: str,
    channel: common_pb2.ChannelType.ValueType,
    change: StatusChange,
    now: dt.datetime,
) -> events_pb2.EventEnvelope:
    message = change.message
    return envelope(
        tenant_id=tenant_id,
        actor_id=actor_id,
        conversation_id=message.conversation_id,
        now=now,
        message_delivered=events_pb2.MessageDelivered(
            message_id=message.id,
            conversation_id=message.conversation_id,
            channel=channel,
            status=change.status,
            platform_message_id=message.platform_message_id,
            status_time=timestamp_of(change.status_time),
            error=change.error,
        ),
    )
