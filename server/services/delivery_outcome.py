"""A delivery's outcome: what is recorded when an attempt ends, the event it writes, and
what makes a delivery impossible before any request."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from chat.v1 import common_pb2, events_pb2
from server.channels.base import Channel, ChannelResponse
from server.domain.queues import Delivery
from server.domain.receipts import ReceiptRef, receipt_ref
from server.domain.tenant import Tenant
from server.events.envelopes import envelope
from server.services.receipts import StatusChange
from server.services.responder import RESPONDER_ID

#: Platforms whose receipts name messages by id (Slack has none; Messenger's watermarks name
#: times, its delivery receipts ids).
_RECEIPT_CHANNELS = frozenset(
    {
        common_pb2.CHANNEL_TYPE_WHATSAPP,
        common_pb2.CHANNEL_TYPE_MESSENGER,
        common_pb2.CHANNEL_TYPE_TEAMS,
    }
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A delivery's final attempt, ready to be recorded."""

    delivery: Delivery
    message: common_pb2.Message | None
    response: ChannelResponse
    status: common_pb2.DeliveryStatus.ValueType
    now: dt.datetime


@dataclass(slots=True)
class Recorded:
    """What recording an outcome changed: the message's status, and the receipts the
    platform sent before the outcome was recorded, applied with it."""

    changed: list[common_pb2.Message]
    receipts: list[StatusChange]


def receipt_ref_of(outcome: Outcome) -> ReceiptRef | None:
    """Where receipts for a sent message wait (None when none can: a failure, or a platform
    whose receipts name no message id)."""
    delivery, response = outcome.delivery, outcome.response
    if not response.success or not response.platform_message_id:
        return None
    if delivery.channel not in _RECEIPT_CHANNELS:
        return None
    return receipt_ref(delivery.tenant_id, delivery.channel, response.platform_message_id)


def outcome_event(outcome: Outcome, message: common_pb2.Message) -> events_pb2.EventEnvelope:
    """MessageSent, or MessageDelivered with the failure."""
    response = outcome.response
    payload: dict[str, Any]
    if response.success:
        sent = common_pb2.Message()
        sent.CopyFrom(message)
        sent.delivery_status = outcome.status
        sent.platform_message_id = response.platform_message_id
        payload = {"message_sent": events_pb2.MessageSent(message=sent)}
    else:
        payload = {
            "message_delivered": events_pb2.MessageDelivered(
                message_id=message.id,
                conversation_id=message.conversation_id,
                channel=message.channel,
                status=outcome.status,
                error=response.error,
            )
        }
    return envelope(
        tenant_id=outcome.delivery.tenant_id,
        actor_id=RESPONDER_ID,
        conversation_id=message.conversation_id,
        now=outcome.now,
        **payload,
    )


def delivery_problem(
    channel: Channel, tenant: Tenant, recipient_id: str, message: common_pb2.Message
) -> str:
    """What makes a delivery impossible before any request ("" when nothing): the tenant's
    configuration, the address, the content."""
    if problem := channel.validate_config(tenant):
        return problem
    if problem := channel.validate_recipient(recipient_id):
        return f"invalid recipient: {problem}"
    if problem := channel.validate_content(message):
        return f"invalid content: {problem}"
    return ""
