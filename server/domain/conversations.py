"""What the services ask of the conversation store: list filters, counter updates, and the
conversations a message's transaction starts."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from chat.v1 import common_pb2

#: The reason of the AlreadyExists a start gets when the user has an active conversation on
#: the channel already (another first message started it): the message is opened again.
ALREADY_ACTIVE = "CONVERSATION_ALREADY_ACTIVE"


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """ListConversations filters; empty values mean "any"."""

    user_id: str = ""
    channel: int = 0
    status: int = 0
    activity_from: dt.datetime | None = None
    activity_to: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    """New messages of one conversation, for record_messages_many."""

    tenant_id: str
    conversation_id: str
    inbound: int
    outbound: int
    now: dt.datetime
    #: Teams, from a verified activity: kept in the metadata, replies are posted there.
    service_url: str = ""
    #: A new conversation (see ``new_conversation``): inserted before its messages are
    #: recorded, in the same transaction.
    start: common_pb2.Conversation | None = None


def new_conversation(
    *, user_id: str, channel: int, channel_conversation_id: str, now: dt.datetime
) -> common_pb2.Conversation:
    """An active conversation that is not stored yet: the transaction storing its first
    message inserts it (Recording.start), so a first contact costs no transaction of its own."""
    conversation = common_pb2.Conversation(
        id=uuid.uuid4().hex,
        user_id=user_id,
        channel=common_pb2.ChannelType.ValueType(channel),
        status=common_pb2.CONVERSATION_STATUS_ACTIVE,
        channel_conversation_id=channel_conversation_id,
    )
    for stamp in (
        conversation.create_time,
        conversation.update_time,
        conversation.last_activity_time,
    ):
        stamp.FromDatetime(now)
    return conversation
