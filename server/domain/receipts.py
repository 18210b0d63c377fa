"""Platform receipts that arrive before their message's send is recorded, and where they wait."""

from __future__ import annotations

import datetime as dt
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


def receipt_ref(tenant_id: str, channel: int, platform_message_id: str) -> str:
    """What names one platform message of a tenant's channel."""
    return f"{tenant_id}|{channel}|{platform_message_id}"
