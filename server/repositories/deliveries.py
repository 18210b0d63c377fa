"""The outbound delivery queue in MongoDB.

MongoDB rather than a Kafka topic: each delivery needs its own state (attempts, next time,
lease), a per-message record that RetryDelivery and GetDeliveryStatus address directly, and
a write in the same transaction as the message it delivers, which only the message store
itself can give. One record per outbound message, keyed by the message id: that id is the
idempotency key, so a message cannot be queued twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2, delivery_service_pb2
from server.repositories.mongo import DELIVERIES, Document, update_and_get

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One conversation's outbound messages, for enqueue_many."""

    tenant_id: str
    messages: Sequence[common_pb2.Message]
    recipient_id: str
    #: Teams: where the replies are posted (from the conversation, never from a request).
    service_url: str
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class Finish:
    """A delivery's last attempt and final state, for finish_many."""

    delivery: Document
    attempt: dict[str, Any]
    state: str
    now: dt.datetime
    platform_message_id: str = ""


class MongoDeliveries:
    """Deliveries of every tenant; each call names one (the worker's claim excepted)."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[DELIVERIES]

    async def enqueue(
        self,
        tenant_id: str,
        messages: Sequence[common_pb2.Message],
        *,
        recipient_id: str,
        service_url: str,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> None:
        """Queue outbound messages, in the transaction that stores them."""
        await self.enqueue_many(
            [Outgoing(tenant_id, messages, recipient_id, service_url, now)], tx=tx
        )

    async def enqueue_many(self, outgoing: Sequence[Outgoing], *, tx: AsyncClientSession) -> None:
        """enqueue for several conversations in one round trip."""
        documents = [
            {
                "_id": message.id,
                "tenant_id": item.tenant_id,
                "conversation_id": message.conversation_id,
                "sequence": message.sequence,
                "channel": message.channel,
                "recipient_id": item.recipient_id,
                "service_url": item.service_url,
                "state": QUEUED,
                "attempts": [],
                "budget_start": 0,
                "create_time": item.now,
                "update_time": item.now,
                "due_time": item.now,
            }
            for item in outgoing
            for message in item.messages
        ]
        if documents:
            await self._collection.insert_many(documents, session=tx)

    async def due(self, *, now: dt.datetime, limit: int) -> list[str]:
        """Ids of the oldest due deliveries (a lapsed lease makes one due again)."""
        cursor = self._collection.find(
            {"state": {"$in": [QUEUED, SENDING]}, "due_time": {"$lte": now}}, {"_id": 1}
        )
        return [d["_id"] for d in await cursor.sort("due_time", ASCENDING).limit(limit).to_list()]

    async def claim(
        self, delivery_id: str, *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> Document | None:
        """The delivery leased to ``owner``, if it is (still) due."""
        return await update_and_get(
            self._collection,
            {"_id": delivery_id, "state": {"$in": [QUEUED, SENDING]}, "due_time": {"$lte": now}},
            {"$set": {"state": SENDING, "owner": owner, "due_time": now + lease}},
            read={"_id": delivery_id, "owner": owner, "state": SENDING},
        )

    async def earlier_pending(
        self, delivery: Document, *, now: dt.datetime, soon: dt.timedelta
    ) -> dt.datetime | None:
        """When to look again if an earlier message of the conversation still waits (sends
        keep order), else None: when the earliest waiting one is due (a retry's backoff, a
        rate limit), or ``soon`` when it is due now or being sent. The earliest one counts:
        every later one waits for it too."""
        first = await self._collection.find_one(
            {
                "tenant_id": delivery["tenant_id"],
                "conversation_id": delivery["conversation_id"],
                "sequence": {"$lt": delivery["sequence"]},
                "state": {"$in": [QUEUED, SENDING]},
            },
            {"state": 1, "due_time": 1},
            sort=[("sequence", ASCENDING)],
        )
        if first is None:
            return None
        due: dt.datetime | None = first.get("due_time")
        if first["state"] == SENDING or due is None:
            return now + soon
        return max(now + soon, due)

    async def finish_many(self, finishes: Sequence[Finish], *, tx: AsyncClientSession) -> bool:
        """Record each attempt and final state (SENT or FAILED), in one round trip; False when
        the lease of any was lost (another process has it now)."""
        done = await self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": f.delivery["_id"], "owner": f.delivery["owner"], "state": SENDING},
                    {
                        "$set": {
                            "state": f.state,
                            "update_time": f.now,
                            "platform_message_id": f.platform_message_id,
                        },
                        "$unset": {"owner": "", "due_time": ""},
                        "$push": {"attempts": f.attempt},
                    },
                )
                for f in finishes
            ],
            ordered=False,
            session=tx,
        )
        return done.modified_count == len(finishes)

    async def retry_later(
        self,
        delivery: Document,
        attempt: dict[str, Any],
        *,
        due: dt.datetime,
        now: dt.datetime,
        parts_sent: int = 0,
        first_platform_id: str = "",
    ) -> bool:
        """Record a failed attempt and put the delivery back in the queue for ``due``, with
        the parts of a split message the platform has already (not sent again)."""
        done = await self._collection.update_one(
            {"_id": delivery["_id"], "owner": delivery["owner"], "state": SENDING},
            {
                "$set": {
                    "state": QUEUED,
                    "due_time": due,
                    "update_time": now,
                    "parts_sent": parts_sent,
                    "first_platform_id": first_platform_id,
                },
                "$unset": {"owner": ""},
                "$push": {"attempts": attempt},
            },
        )
        return done.modified_count == 1

    async def postpone(self, delivery: Document, *, due: dt.datetime) -> None:
        """Give the claim back unchanged (an earlier message goes first)."""
        await self._collection.update_one(
            {"_id": delivery["_id"], "owner": delivery["owner"], "state": SENDING},
            {"$set": {"state": QUEUED, "due_time": due}, "$unset": {"owner": ""}},
        )

    async def hold(
        self, tenant_id: str, channel: int, *, recipient_id: str | None, until: dt.datetime
    ) -> int:
        """A platform's rate limit: the queued deliveries it covers (the tenant's on this
        channel, or one recipient's) wait until ``until``; how many were held."""
        query: Document = {
            "tenant_id": tenant_id,
            "channel": channel,
            "state": QUEUED,
            "due_time": {"$lt": until},
        }
        if recipient_id is not None:
            query["recipient_id"] = recipient_id
        result = await self._collection.update_many(query, {"$set": {"due_time": until}})
        return result.modified_count

    async def get(self, tenant_id: str, message_id: str) -> Document | None:
        return await self._collection.find_one({"_id": message_id, "tenant_id": tenant_id})

    async def failed_page(
        self,
        tenant_id: str,
        *,
        channel: int,
        updated_from: dt.datetime | None,
        updated_to: dt.datetime | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Document]:
        """Failed deliveries, newest failure first."""
        query: Document = {"tenant_id": tenant_id, "state": FAILED}
        if channel:
            query["channel"] = channel
        window: Document = {}
        if updated_from is not None:
            window["$gte"] = updated_from
        if updated_to is not None:
            window["$lt"] = updated_to
        if window:
            query["update_time"] = window
        if after is not None:
            moment, last_id = after
            query["$or"] = [
                {"update_time": {"$lt": moment}},
                {"update_time": moment, "_id": {"$lt": last_id}},
            ]
        cursor = self._collection.find(query).sort(
            [("update_time", DESCENDING), ("_id", DESCENDING)]
        )
        return [document async for document in cursor.limit(limit)]

    async def requeue(
        self, tenant_id: str, message_id: str, *, now: dt.datetime
    ) -> Document | None:
        """Put a failed delivery back with a fresh attempt budget; None when it is not failed."""
        current = await self.get(tenant_id, message_id)
        if current is None or current["state"] != FAILED:
            return None
        return await update_and_get(
            self._collection,
            {"_id": message_id, "tenant_id": tenant_id, "state": FAILED},
            {
                "$set": {
                    "state": QUEUED,
                    "due_time": now,
                    "update_time": now,
                    "budget_start": len(current.get("attempts", [])),
                }
            },
        )


def attempt_record(
    *,
    now: dt.datetime,
    success: bool,
    platform_message_id: str = "",
    error: common_pb2.PlatformError | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"time": now, "success": success}
    if platform_message_id:
        record["platform_message_id"] = platform_message_id
    if error is not None:
        record["error"] = {
            "code": error.code,
            "message": error.message,
            "retryable": error.retryable,
            "http_status": error.http_status,
        }
    return record


_STATUS = {
    QUEUED: common_pb2.DELIVERY_STATUS_QUEUED,
    SENDING: common_pb2.DELIVERY_STATUS_QUEUED,
    SENT: common_pb2.DELIVERY_STATUS_SENT,
    FAILED: common_pb2.DELIVERY_STATUS_FAILED,
}


def to_proto(document: Document) -> delivery_service_pb2.Delivery:
    """The contract's view of a delivery record."""
    delivery = delivery_service_pb2.Delivery(
        message_id=document["_id"],
        conversation_id=document["conversation_id"],
        channel=document["channel"],
        recipient_id=document["recipient_id"],
        status=_STATUS[document["state"]],
        attempt_count=len(document.get("attempts", [])),
        platform_message_id=document.get("platform_message_id", ""),
    )
    delivery.create_time.FromDatetime(document["create_time"])
    delivery.update_time.FromDatetime(document["update_time"])
    if document["state"] == QUEUED and document.get("due_time"):
        delivery.next_attempt_time.FromDatetime(document["due_time"])
    for attempt in document.get("attempts", []):
        item = delivery.attempts.add(
            success=attempt["success"], platform_message_id=attempt.get("platform_message_id", "")
        )
        item.attempt_time.FromDatetime(attempt["time"])
        if "error" in attempt:
            item.error.CopyFrom(common_pb2.PlatformError(**attempt["error"]))
    failures = [a for a in delivery.attempts if not a.success]
    if failures:
        delivery.last_error.CopyFrom(failures[-1].error)
    return delivery
