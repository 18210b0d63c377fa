"""Receipts that arrived before their message was recorded as sent: a platform may report
"sent" or "delivered" within milliseconds of accepting a message, before the delivery's outcome
is committed. They wait here, keyed by tenant, channel and platform message id, until the
outcome is recorded (or a day has passed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.repositories.mongo import EARLY_RECEIPTS, Document

#: How long a receipt waits for its message (the parts of a split message after the first,
#: whose ids name no message, go then).
KEEP = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class EarlyReceipt:
    """The statuses reported for one platform message id, with the failure when one is."""

    tenant_id: str
    channel: int
    platform_message_id: str
    conversation_id: str
    statuses: tuple[common_pb2.DeliveryStatus.ValueType, ...]
    error: common_pb2.PlatformError | None


def receipt_key(tenant_id: str, channel: int, platform_message_id: str) -> str:
    return f"{tenant_id}|{channel}|{platform_message_id}"


class MongoEarlyReceipts:
    """Early receipts of every tenant; each call names its tenant in the keys."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[EARLY_RECEIPTS]

    async def park(
        self,
        tenant_id: str,
        channel: int,
        platform_message_ids: Sequence[str],
        *,
        status: common_pb2.DeliveryStatus.ValueType,
        error: common_pb2.PlatformError | None,
        conversation_id: str,
        now: dt.datetime,
        session: AsyncClientSession,
    ) -> None:
        """Keep ``status`` for each id (with the statuses already kept for it)."""
        extra: Document = {"error": error.SerializeToString()} if error is not None else {}
        await self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": receipt_key(tenant_id, channel, platform_id)},
                    {
                        "$setOnInsert": {
                            "tenant_id": tenant_id,
                            "channel": channel,
                            "platform_message_id": platform_id,
                            "conversation_id": conversation_id,
                            "expire_time": now + KEEP,
                        },
                        "$addToSet": {"statuses": int(status)},
                        **({"$set": extra} if extra else {}),
                    },
                    upsert=True,
                )
                for platform_id in platform_message_ids
            ],
            ordered=False,
            session=session,
        )

    async def waiting(self, keys: Sequence[str]) -> list[str]:
        """Which of these keys have receipts waiting (a read outside any transaction)."""
        if not keys:
            return []
        cursor = self._collection.find({"_id": {"$in": list(keys)}}, {"_id": 1})
        return [document["_id"] async for document in cursor]

    async def take(self, keys: Sequence[str], *, session: AsyncClientSession) -> list[EarlyReceipt]:
        """Remove the receipts waiting under these keys and return them."""
        cursor = self._collection.find({"_id": {"$in": list(keys)}}, session=session)
        found = [document async for document in cursor]
        if found:
            await self._collection.delete_many(
                {"_id": {"$in": [document["_id"] for document in found]}}, session=session
            )
        return [
            EarlyReceipt(
                tenant_id=document["tenant_id"],
                channel=document["channel"],
                platform_message_id=document["platform_message_id"],
                conversation_id=document.get("conversation_id", ""),
                statuses=tuple(document.get("statuses", [])),
                error=common_pb2.PlatformError.FromString(document["error"])
                if document.get("error")
                else None,
            )
            for document in found
        ]
