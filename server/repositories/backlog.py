"""Read-only counts of the queues kept in MongoDB, for the metrics sampler: each a count and
the oldest item's write time, over indexed or small sets (what waits, not what is done)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from server.domain.backlog import DELIVERY, INBOX, OUTBOX, REPLY, Backlog
from server.domain.errors import StoreUnavailableError
from server.domain.queues import QUEUED, SENDING
from server.repositories.ingest import SET_ASIDE
from server.repositories.mongo import DELIVERIES, INGEST_INBOX, REPLY_JOBS, Document
from server.repositories.mongo import OUTBOX as OUTBOX_COLLECTION

#: The queues are the whole service's: their counts span tenants by design (read only).
_COMMENT = "cross-tenant: the queues' backlogs for the metrics"
#: queue -> (collection, what waits in it, the field that says when an item was written, the
#: order that finds the oldest: the outbox's indexed ``position`` follows its write order).
_QUEUES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    # Published events leave the outbox; an earlier version's published ones do not wait.
    OUTBOX: (OUTBOX_COLLECTION, {"published": {"$ne": True}}, "create_time", "position"),
    # Reply jobs leave their collection with the reply.
    REPLY: (REPLY_JOBS, {}, "enqueue_time", "enqueue_time"),
    # Deliveries stay, SENT or FAILED, for ListFailedDeliveries: only these two states wait.
    DELIVERY: (DELIVERIES, {"state": {"$in": [QUEUED, SENDING]}}, "create_time", "create_time"),
    # Set-aside batches wait for an operator, not for the worker.
    INBOX: (INGEST_INBOX, {"status": {"$ne": SET_ASIDE}}, "enqueue_time", "enqueue_time"),
}


class MongoBacklog:
    """How many items wait in each queue, and since when the oldest."""

    def __init__(self, *, database: AsyncDatabase[Document], max_time_ms: int = 2000) -> None:
        self._database = database
        #: Bounds each query on the server too: a sampler must never load the database.
        self._max_time_ms = max_time_ms

    async def backlogs(self) -> list[Backlog]:
        """Every queue's backlog; StoreUnavailableError when MongoDB does not answer."""
        try:
            return [await self._backlog(queue) for queue in _QUEUES]
        except PyMongoError as exc:
            raise StoreUnavailableError(f"backlog not read: {type(exc).__name__}") from exc

    async def _backlog(self, queue: str) -> Backlog:
        name, waiting, written, order = _QUEUES[queue]
        collection = self._database[name]
        items = await collection.count_documents(
            waiting, maxTimeMS=self._max_time_ms, comment=_COMMENT
        )
        oldest: dt.datetime | None = None
        if items:
            first = await collection.find_one(
                waiting,
                {written: True},
                sort=[(order, ASCENDING)],
                max_time_ms=self._max_time_ms,
                comment=_COMMENT,
            )
            oldest = first.get(written) if first else None
        return Backlog(queue=queue, items=items, oldest=oldest)
