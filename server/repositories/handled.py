"""Which events each worker handler has applied: the record that makes handlers idempotent.

A handler writes its record in the same transaction as its effect, so an event's effect is
applied exactly once however often Kafka delivers it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.domain.errors import AlreadyExists
from server.repositories.mongo import HANDLED_EVENTS, Document, Transactions


class MongoHandledEvents:
    """Applied-event records, keyed by handler and key (usually the event id)."""

    def __init__(self, *, database: AsyncDatabase[Document], transactions: Transactions) -> None:
        self._collection = database[HANDLED_EVENTS]
        self._transactions = transactions

    async def seen(self, handler: str, key: str) -> bool:
        """Whether ``handler`` recorded ``key``."""
        return await self._collection.find_one({"_id": f"{handler}:{key}"}, {"_id": 1}) is not None

    async def mark(
        self, handler: str, key: str, *, now: dt.datetime, tx: AsyncClientSession
    ) -> None:
        """Record ``key``; a second record of the same key fails the transaction."""
        await self._collection.insert_one(
            {"_id": f"{handler}:{key}", "handle_time": now}, session=tx
        )

    async def apply_once(
        self,
        handler: str,
        event_id: str,
        work: Callable[[AsyncClientSession], Awaitable[None]],
        *,
        now: dt.datetime,
    ) -> bool:
        """Run ``work`` and record the event in one transaction, unless it was recorded
        before; returns whether it ran. A race with another worker ends the same way."""
        if await self.seen(handler, event_id):
            return False

        async def both(tx: AsyncClientSession) -> None:
            await self.mark(handler, event_id, now=now, tx=tx)
            await work(tx)

        try:
            await self._transactions.run(both)
        except AlreadyExists:
            if await self.seen(handler, event_id):
                return False
            raise
        return True
