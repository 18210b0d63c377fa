"""Platform receipts that arrive before their message's send is recorded, and where they wait."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from chat.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class EarlyReceipt:
    """One status reported for a platform message id before its send was recorded."""

    tenant_id: str
    channel: int
    platform_message_id: str
    conversation_id: str
    status: common_pb2.DeliveryStatus.ValueType
    error: common_pb2.PlatformError | None
    status_time: dt.datetime
    actor_id: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A status a platform reports, ready to apply: on messages by their platform ids, and
    with a watermark on every message of a conversation the platform had by a time."""

    channel: int
    status: common_pb2.DeliveryStatus.ValueType
    platform_message_ids: tuple[str, ...]
    #: (conversation id, time): the messages of the conversation handed over by then.
    watermark: tuple[str, dt.datetime] | None
    #: The reporting user's active conversation, if any: where a channel's ids are unique
    #: within a chat only, they are matched within it (``named_by_id``).
    conversation_id: str | None
    error: common_pb2.PlatformError | None
    status_time: dt.datetime
    actor_id: str


@dataclass(frozen=True, slots=True)
class ReceiptRef:
    """What names one platform message of a tenant's channel: where its early receipts wait."""

    tenant_id: str
    channel: int
    platform_message_id: str

    @property
    def key(self) -> str:
        return f"{self.tenant_id}|{self.channel}|{self.platform_message_id}"


#: Channels whose message ids are unique on the platform (WhatsApp's wamid, Messenger's mid).
#: Teams' and Slack's are unique within a chat only.
UNIQUE_IDS = frozenset({common_pb2.CHANNEL_TYPE_WHATSAPP, common_pb2.CHANNEL_TYPE_MESSENGER})


def named_by_id(
    channel: int, messages: Iterable[common_pb2.Message], conversation_id: str | None
) -> list[common_pb2.Message]:
    """Of the messages one platform id names on ``channel``, the ones a status of it is about.
    Where ids are unique, every one: the status of a message in a conversation closed since
    (the user may have started another) is still its status. Where they are unique within a
    chat only, an id can name another chat's message too: those in ``conversation_id``, the
    reporting user's active conversation, if there is one."""
    named = list(messages)
    if channel in UNIQUE_IDS or not conversation_id:
        return named
    return [m for m in named if m.conversation_id == conversation_id]


def receipt_ref(tenant_id: str, channel: int, platform_message_id: str) -> ReceiptRef:
    """The ref of one platform message of a tenant's channel."""
    return ReceiptRef(tenant_id, channel, platform_message_id)


_S = common_pb2
#: For each status, the statuses a message may move to it from: never backwards (SENT <
#: DELIVERED < READ); FAILED only before delivery, and a later success (a replayed send, a
#: DELIVERED or READ report) proves a FAILED one wrong.
FORWARD_FROM: dict[int, list[int]] = {
    # FAILED -> SENT: a replayed delivery (RetryDelivery) that went through after all.
    _S.DELIVERY_STATUS_SENT: [_S.DELIVERY_STATUS_QUEUED, _S.DELIVERY_STATUS_FAILED],
    _S.DELIVERY_STATUS_DELIVERED: [
        _S.DELIVERY_STATUS_QUEUED,
        _S.DELIVERY_STATUS_SENT,
        _S.DELIVERY_STATUS_FAILED,
    ],
    _S.DELIVERY_STATUS_READ: [
        _S.DELIVERY_STATUS_QUEUED,
        _S.DELIVERY_STATUS_SENT,
        _S.DELIVERY_STATUS_DELIVERED,
        _S.DELIVERY_STATUS_FAILED,
    ],
    _S.DELIVERY_STATUS_FAILED: [_S.DELIVERY_STATUS_QUEUED, _S.DELIVERY_STATUS_SENT],
}
