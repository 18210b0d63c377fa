"""Per-minute analytics rollups per tenant and channel, kept by the event worker."""

from __future__ import annotations

import datetime as dt

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.repositories.mongo import ANALYTICS_MINUTES, Document

#: Counters summed over minutes (the mean figures are derived from the *_sum ones).
COUNTERS = (
    "messages_in",
    "messages_out",
    "responses",
    "response_time_sum_ms",
    "conversations_ended",
    "conversation_duration_sum_seconds",
    "deliveries_succeeded",
    "deliveries_failed",
)
MAXIMA = ("response_time_max_ms",)


def minute_of(moment: dt.datetime) -> dt.datetime:
    """The start of the minute ``moment`` falls in."""
    return moment.replace(second=0, microsecond=0)


class MongoAnalytics:
    """Rollups of every tenant; each call names one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[ANALYTICS_MINUTES]

    async def add(
        self,
        tenant_id: str,
        *,
        moment: dt.datetime,
        channel: int,
        increments: dict[str, float],
        maxima: dict[str, float] | None = None,
        tx: AsyncClientSession,
    ) -> None:
        """Add to the minute's counters (created on first use)."""
        minute = minute_of(moment)
        update: Document = {
            "$setOnInsert": {"minute": minute, "channel": channel},
            "$inc": increments,
        }
        if maxima:
            update["$max"] = maxima
        await self._collection.update_one(
            # An upsert takes tenant_id from the filter.
            {"_id": f"{tenant_id}:{channel}:{minute:%Y%m%d%H%M}", "tenant_id": tenant_id},
            update,
            upsert=True,
            session=tx,
        )

    async def minutes(
        self, tenant_id: str, *, start: dt.datetime, end: dt.datetime, channel: int
    ) -> list[Document]:
        """The minutes in [start, end), oldest first."""
        query: Document = {"tenant_id": tenant_id, "minute": {"$gte": start, "$lt": end}}
        if channel:
            query["channel"] = channel
        cursor = self._collection.find(query).sort([("minute", ASCENDING), ("channel", ASCENDING)])
        return [document async for document in cursor]
