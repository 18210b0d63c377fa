"""Delivery receipts: statuses the platforms report move outbound messages forward (never
back), with a MessageDelivered event each and an update on the conversation's streams.

A receipt can arrive before its message is recorded as sent: WhatsApp may report "sent" or
"delivered" within milliseconds of accepting a message, while the delivery's outcome is still
being committed. Such a receipt names a platform id no message has yet, so it is parked
(repositories/receipts) and applied once the outcome is recorded. Both sides look for the
other after their own commit (the ingest for the message, the delivery for parked receipts),
so whichever commits second finds the first: none is left waiting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.events.envelopes import envelope
from server.repositories.receipts import MongoEarlyReceipts, receipt_key
from server.services.ports import MessageRepository, Outbox, TransactionRunner, Tx
from server.services.streams import QuietLiveEvents, timestamp_of

log = structlog.get_logger("chat.receipts")

#: Parked statuses are applied in this order (each only where it moves the status forward).
_ORDER = (
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


class Receipts:
    """Applies receipts in a caller's transaction, parks early ones, and settles them."""

    def __init__(
        self,
        *,
        messages: MessageRepository,
        early: MongoEarlyReceipts,
        outbox: Outbox,
        transactions: TransactionRunner,
        live: QuietLiveEvents,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._messages = messages
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
        session: Tx,
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
            session=session,
        )
        changes = [StatusChange(m, status, error, status_time) for m in changed]
        if changes:
            await self._outbox.add(
                [_delivered(tenant_id, actor_id, channel, change, now) for change in changes],
                now=now,
                session=session,
            )
        return changes

    async def park_unknown(
        self,
        tenant_id: str,
        *,
        channel: int,
        status: common_pb2.DeliveryStatus.ValueType,
        platform_message_ids: Sequence[str],
        conversation_id: str,
        error: common_pb2.PlatformError | None,
        now: dt.datetime,
        session: Tx,
    ) -> list[str]:
        """Park the receipt for the ids no stored message has yet; those ids."""
        known = await self._messages.known_platform_ids(
            tenant_id, channel, platform_message_ids, session=session
        )
        unknown = [pid for pid in platform_message_ids if pid not in known]
        if unknown:
            await self._early.park(
                tenant_id,
                channel,
                unknown,
                status=status,
                error=error,
                conversation_id=conversation_id,
                now=now,
                session=session,
            )
        return unknown

    async def settle(self, keys: Sequence[str], *, now: dt.datetime) -> None:
        """After a commit: apply the parked receipts under these keys (receipt_key) whose
        messages are recorded now. One read when none waits."""
        waiting = await self._early.waiting(keys)
        if not waiting:
            return

        async def work(tx: Tx) -> list[tuple[str, StatusChange]]:
            changes: list[tuple[str, StatusChange]] = []
            for receipt in await self._early.take(waiting, session=tx):
                for status in sorted(receipt.statuses, key=_ORDER.index):
                    applied = await self.apply(
                        receipt.tenant_id,
                        channel=common_pb2.ChannelType.ValueType(receipt.channel),
                        status=status,
                        platform_message_ids=[receipt.platform_message_id],
                        watermark=None,
                        conversation_id=receipt.conversation_id or None,
                        error=receipt.error
                        if status == common_pb2.DELIVERY_STATUS_FAILED
                        else None,
                        status_time=now,
                        actor_id=receipt.tenant_id,
                        now=now,
                        session=tx,
                    )
                    changes += [(receipt.tenant_id, change) for change in applied]
            return changes

        changes = await self._transactions.run(work)
        log.info("early receipts applied", receipts=len(waiting), changed=len(changes))
        by_tenant: dict[str, list[StatusChange]] = {}
        for tenant_id, change in changes:
            by_tenant.setdefault(tenant_id, []).append(change)
        for tenant_id, tenant_changes in by_tenant.items():
            await self.publish(tenant_id, tenant_changes)

    async def settle_known(
        self, tenant_id: str, channel: int, platform_message_ids: Sequence[str], *, now: dt.datetime
    ) -> None:
        """After parking: the delivery may have committed meanwhile; settle what it did."""
        known = await self._messages.known_platform_ids(tenant_id, channel, platform_message_ids)
        await self.settle([receipt_key(tenant_id, channel, pid) for pid in known], now=now)

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
