"""Messages as the services build and store them: processed content, the message built from
it, the rows written and the status moves recorded."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from google.protobuf import duration_pb2

from chat.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Advance:
    """An outbound message's new delivery status, for advance_many."""

    tenant_id: str
    message_id: str
    status: common_pb2.DeliveryStatus.ValueType
    platform_message_id: str = ""


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One message to store, with its tenant and search text."""

    tenant_id: str
    message: common_pb2.Message
    search_text: str


def build_message(
    conversation: common_pb2.Conversation,
    processed: ProcessedContent,
    *,
    direction: common_pb2.MessageDirection.ValueType,
    sender_id: str,
    now: dt.datetime,
    reply_to: str,
    metadata: dict[str, str],
) -> common_pb2.Message:
    """A new message of ``conversation`` from processed content (its sequence is assigned when
    it is stored); an outbound one starts SENT on the web, QUEUED for a platform."""
    message = common_pb2.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation.id,
        direction=direction,
        type=processed.type,
        channel=conversation.channel,
        sender_id=sender_id,
        content=processed.content,
        language=processed.language,
        entities=processed.entities,
        reply_to_message_id=reply_to,
        metadata={**processed.metadata, **metadata},
    )
    if direction == common_pb2.MESSAGE_DIRECTION_OUTBOUND:
        message.delivery_status = (
            common_pb2.DELIVERY_STATUS_SENT
            if conversation.channel == common_pb2.CHANNEL_TYPE_WEB
            else common_pb2.DELIVERY_STATUS_QUEUED
        )
    message.create_time.FromDatetime(now)
    return message


def response_time(inbound: common_pb2.Message, reply: common_pb2.Message) -> duration_pb2.Duration:
    """How long the bot took to answer: from the user's message to the reply."""
    took = duration_pb2.Duration()
    took.FromTimedelta(reply.create_time.ToDatetime() - inbound.create_time.ToDatetime())
    return took


@dataclass(frozen=True, slots=True)
class ProcessedContent:
    """Content ready to store, with what processing found."""

    content: common_pb2.Content
    type: common_pb2.MessageType.ValueType
    language: str
    entities: tuple[common_pb2.Entity, ...]
    #: Lower-cased text for search ("" when the content has none).
    search_text: str
    metadata: dict[str, str]
