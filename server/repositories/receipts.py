"""Receipts that arrived before their message was recorded as sent: a platform may report
"sent" or "delivered" within milliseconds of accepting a message, before the delivery's outcome
is committed. They wait here, one document per reported status, found by tenant, channel and
platform message id (``ref``), until the outcome is recorded (or a day has passed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.domain.receipts import EarlyReceipt, ReceiptRef, receipt_ref
from server.repositories.mongo import EARLY_RECEIPTS, Document

#: How long a receipt waits for its message (the parts of a split message after the first,
#: whose ids name no message, go then), from when it was parked: by the server's clock, not
#: the platform's status time, which a payload may set anywhere from year 1 (gone before its
#: message is sent) to year 9999 (past the last datetime, an OverflowError).
KEEP = dt.timedelta(days=1)


class MongoEarlyReceipts:
    """Early receipts of every tenant; each ref names its tenant."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[EARLY_RECEIPTS]

    async def park(
        self, receipts: Sequence[EarlyReceipt], *, now: dt.datetime, tx: AsyncClientSession
    ) -> None:
        """Keep the receipts until ``now`` + KEEP; one per ref and status (a repeat of one is
        the same document, and two statuses for one message never write the same one)."""
        await self._collection.bulk_write(
            [
                UpdateOne(
                    # An upsert takes tenant_id from the filter.
                    {"_id": f"{_ref(r)}|{int(r.status)}", "tenant_id": r.tenant_id},
                    {
                        "$setOnInsert": {
                            "ref": _ref(r),
                            "channel": r.channel,
                            "platform_message_id": r.platform_message_id,
                            "conversation_id": r.conversation_id,
                            "status": int(r.status),
                            "error": r.error.SerializeToString() if r.error else b"",
                            "status_time": r.status_time,
                            "actor_id": r.actor_id,
                            "expire_time": now + KEEP,
                        }
                    },
                    upsert=True,
                )
                for r in receipts
            ],
            ordered=False,
            session=tx,
        )

    async def waiting(self, refs: Sequence[ReceiptRef]) -> bool:
        """Whether any receipt waits under these refs (a read outside any transaction)."""
        if not refs:
            return False
        found = await self._collection.find_one(_under(refs), {"_id": 1})
        return found is not None

    async def take(
        self, refs: Sequence[ReceiptRef], *, tx: AsyncClientSession
    ) -> list[EarlyReceipt]:
        """Remove the receipts waiting under these refs and return them."""
        if not refs:
            return []
        cursor = self._collection.find(_under(refs), session=tx)
        found = [document async for document in cursor]
        if found:
            await self._collection.delete_many(
                {
                    "_id": {"$in": [document["_id"] for document in found]},
                    "tenant_id": {"$in": sorted({document["tenant_id"] for document in found})},
                },
                session=tx,
            )
        return [
            EarlyReceipt(
                tenant_id=document["tenant_id"],
                channel=document["channel"],
                platform_message_id=document["platform_message_id"],
                conversation_id=document.get("conversation_id", ""),
                status=document["status"],
                error=common_pb2.PlatformError.FromString(document["error"])
                if document.get("error")
                else None,
                status_time=document["status_time"],
                actor_id=document.get("actor_id", ""),
            )
            for document in found
        ]


def _ref(receipt: EarlyReceipt) -> str:
    return receipt_ref(receipt.tenant_id, receipt.channel, receipt.platform_message_id).key


def _under(refs: Sequence[ReceiptRef]) -> Document:
    """The receipts under these refs (each ref names its tenant; one $in per field, which the
    embedded store serves from the ref index, where an $or would scan)."""
    return {
        "ref": {"$in": [ref.key for ref in refs]},
        "tenant_id": {"$in": sorted({ref.tenant_id for ref in refs})},
    }
